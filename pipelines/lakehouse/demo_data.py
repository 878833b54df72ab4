"""A realistic customer-churn feature table, generated in Spark and written to Delta.

Rows are generated from ``spark.range`` with seeded column expressions, so the table is deterministic
for a given ``(seed, rows, partitions)`` and scales to many millions of rows without touching the driver.

The table has

* ``customer_id`` (an id, excluded from features by the default configuration);
* ~30 numeric features on very different scales (months, currency, gigabytes, ratios, counts),
  some strongly correlated (``total_charges`` ~ ``tenure_months * monthly_charges``,
  ``monthly_charges_eur``), eight pure-noise columns, and a few nulls;
* ``plan`` (a string of 3 values, a few nulls), ``region`` (a string of 60 values, one-hot beyond the
  default cap of 50 categories shares the "other" slot), ``signup_date`` (a date) and ``weekly_usage_gb``
  (an ``array<double>`` of the last 4 weeks' usage);
* ``churned``: a binary label (0/1) drawn from a logistic model of a subset of the features (the plan and
  the usage trend among them);
* ``lifetime_value``: a numeric regression target computed *from* ``churned``: a label leak for the churn
  model, so the default configuration excludes it (``data.exclude``).

Version 0 is the initial write; version 1 appends new customers, so time travel is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F

from pipelines.config import DemoConfig, is_path
from pipelines.identifiers import quote_identifier, table_name_parts
from pipelines.lakehouse.delta import history

NOISE_COLUMNS = 8


@dataclass(frozen=True)
class DemoTable:
    """What :func:`write_demo_table` wrote."""

    path: str
    versions: tuple[int, ...]
    rows: int


def churn_features(spark: SparkSession, rows: int, seed: int, partitions: int, first_id: int = 0,
                   null_fraction: float = 0.005) -> DataFrame:
    """Generate ``rows`` customers with ids ``first_id .. first_id + rows - 1``.

    The label follows ``P(churn) = sigmoid(z)`` with ``z`` a linear function of standardized tenure,
    charges, support calls, contract length, satisfaction, late payments and inactivity.
    """
    base = spark.range(first_id, first_id + rows, numPartitions=partitions).withColumnRenamed(
        "id", "customer_id"
    )
    counter = iter(range(10_000))

    def uniform() -> Column:
        return F.rand(seed * 1000 + next(counter))

    def normal() -> Column:
        return F.randn(seed * 1000 + next(counter))

    df = (
        base.withColumn("tenure_months", F.floor(uniform() * 72).cast("int"))
        .withColumn("contract_months", F.element_at(F.array(F.lit(1), F.lit(12), F.lit(24)),
                                                    (F.floor(uniform() * 3) + 1).cast("int")))
        .withColumn("monthly_charges", F.round(20 + uniform() * 100, 2))
        .withColumn("num_services", F.floor(1 + uniform() * 8).cast("int"))
        .withColumn("age", F.floor(18 + uniform() * 62).cast("int"))
        .withColumn("num_devices", F.floor(F.exp(normal() * 0.6 + 0.7)).cast("int"))
        .withColumn("data_usage_gb", F.round(F.exp(normal() * 1.1 + 2.5), 3))
        .withColumn("avg_session_minutes", F.abs(normal() * 15 + 35))
        .withColumn("support_calls_90d", F.floor(F.exp(normal() * 0.8)).cast("int"))
        .withColumn("late_payments_12m", F.floor(F.pow(uniform(), 3) * 6).cast("int"))
        .withColumn("days_since_last_login", F.floor(F.exp(normal() * 1.2 + 1.5)).cast("int"))
        .withColumn("discount_pct", F.round(F.pow(uniform(), 2) * 0.3, 4))
        .withColumn("satisfaction_score", F.round(F.least(F.greatest(normal() * 2 + 6.5, F.lit(1.0)),
                                                          F.lit(10.0)), 1))
        .withColumn("account_balance", F.round(normal() * 2500 - 300, 2))
        .withColumn("referrals", F.floor(F.pow(uniform(), 4) * 10).cast("int"))
        .withColumn("household_income", F.round(F.exp(normal() * 0.5 + 10.8), 0))
        .withColumn("credit_score", F.floor(300 + F.least(F.greatest(normal() * 0.15 + 0.6, F.lit(0.0)),
                                                          F.lit(1.0)) * 550).cast("int"))
        .withColumn("page_views_30d", F.floor(F.exp(normal() * 1.0 + 4.0)).cast("long"))
        .withColumn("is_paperless", (uniform() < 0.6).cast("int"))
        .withColumn("has_partner", (uniform() < 0.45).cast("int"))
    )
    # Correlated columns.
    df = (
        df.withColumn("total_charges", F.round(F.col("tenure_months") * F.col("monthly_charges")
                                               * (1 + normal() * 0.05), 2))
        .withColumn("monthly_charges_eur", F.round(F.col("monthly_charges") * 0.92 + normal() * 0.5, 2))
        .withColumn("charges_per_service", F.col("monthly_charges") / F.col("num_services"))
        .withColumn("logins_30d", F.greatest(F.lit(0), F.floor(30 - F.col("days_since_last_login")
                                                                + normal() * 3)).cast("int"))
    )
    for index in range(1, NOISE_COLUMNS + 1):
        scale = 10.0 ** (index % 5 - 1)  # noise on scales from 0.1 to 1000
        df = df.withColumn(f"noise_{index}", normal() * scale)

    z = (
        -1.2
        - 0.045 * (F.col("tenure_months") - 36)
        + 0.025 * (F.col("monthly_charges") - 70)
        + 0.45 * F.col("support_calls_90d")
        - 0.06 * (F.col("contract_months") - 12)
        - 0.35 * (F.col("satisfaction_score") - 6.5)
        + 0.5 * F.col("late_payments_12m")
        + 0.03 * F.col("days_since_last_login")
        - 2.0 * F.col("discount_pct")
        + 0.3 * normal()
    )
    plan_draw, region_draw = uniform(), uniform()
    df = (
        df.withColumn("plan", F.when(plan_draw < 0.45, "basic").when(plan_draw < 0.8, "standard")
                      .when(plan_draw < 0.99, "premium").otherwise(F.lit(None).cast("string")))
        .withColumn("region", F.concat(F.lit("region-"), F.floor(F.pow(region_draw, 2) * 60).cast("int")
                                       .cast("string")))
        .withColumn("signup_date", F.date_sub(F.lit("2026-06-30").cast("date"), F.col("tenure_months") * 30))
        .withColumn("weekly_usage_gb", F.array(*[F.round(F.col("data_usage_gb") / 4 * (1 + normal() * 0.2), 3)
                                                 for _ in range(4)]))
    )
    usage_trend = (F.col("weekly_usage_gb")[3] - F.col("weekly_usage_gb")[0]) / (F.col("data_usage_gb") / 4 + 1)
    z = (z + F.when(F.col("plan") == "basic", 0.3).when(F.col("plan") == "premium", -0.4).otherwise(0.0)
         - 0.8 * usage_trend)
    df = df.withColumn("churned", (uniform() < 1 / (1 + F.exp(-z))).cast("int"))
    df = df.withColumn(
        "lifetime_value",
        F.round(F.col("monthly_charges") * F.col("contract_months") * (1 - F.col("discount_pct"))
                + 4.0 * F.col("tenure_months") + 40 * F.col("num_services") - 25 * F.col("churned")
                + normal() * 50, 2),
    )
    # A few nulls, as in real extracts.
    df = df.withColumn("satisfaction_score",
                       F.when(uniform() < null_fraction, F.lit(None)).otherwise(F.col("satisfaction_score")))
    df = df.withColumn("days_since_last_login",
                       F.when(uniform() < null_fraction, F.lit(None)).otherwise(F.col("days_since_last_login")))
    return df


def _write(writer: DataFrameWriter, table: str) -> None:
    """To a path, or to a catalog table."""
    if is_path(table):
        writer.save(table)
    else:
        writer.saveAsTable(table)


def write_demo_table(spark: SparkSession, config: DemoConfig, table: str) -> DemoTable:
    """Overwrite ``table`` (``data.table``) with version 0 (``rows`` customers), then append version 1.

    Re-running replaces the content (new versions are added on top, as Delta keeps history).
    """
    parts = [] if is_path(table) else table_name_parts(table) or []
    if len(parts) > 1:  # a catalog name: its database may be new
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {'.'.join(map(quote_identifier, parts[:-1]))}")
    initial = churn_features(spark, config.rows, config.seed, config.partitions,
                             null_fraction=config.null_fraction)
    _write(initial.write.format("delta").mode("overwrite").option("overwriteSchema", "true"), table)
    appended = churn_features(spark, config.append_rows, config.seed + 1,
                              max(1, config.partitions // 2), first_id=config.rows,
                              null_fraction=config.null_fraction)
    _write(appended.write.format("delta").mode("append"), table)
    versions = tuple(version for version, _ in history(spark, table))
    return DemoTable(path=table, versions=versions, rows=config.rows + config.append_rows)
