"""Reading feature tables from real Delta tables: pinned versions, validation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import train_sweep
from pipelines.cli import run_job
from pipelines.features.fitting import string_counts
from pipelines.identifiers import column
from pipelines.lakehouse.checks import Profile, common_lengths
from pipelines.lakehouse.reader import read_feature_table, resolve_version, table_versions
from tests.conftest import DEMO_APPEND_ROWS, DEMO_ROWS, make_config, table_overrides


def test_latest_version_is_pinned_and_returned(spark: SparkSession, demo_table: str, tmp_path: Path) -> None:
    config = make_config(demo_table, tmp_path)
    table = read_feature_table(spark, config.data, "logistic")
    assert table.ref.version == 1
    assert table.ref.identifier == demo_table
    assert table.rows_read == DEMO_ROWS + DEMO_APPEND_ROWS
    assert 0 < table.rows_dropped_null < 0.05 * table.rows_read  # the demo table has a few nulls
    assert table.dataframe.count() == table.rows
    assert "customer_id" not in table.features and "churned" not in table.features
    assert "lifetime_value" not in table.features and len(table.features) >= 29  # derived from the label
    assert table.columns.left_out == {"customer_id": "listed in data.exclude",
                                      "lifetime_value": "listed in data.exclude"}
    families = table.columns.used
    assert (families["plan"], families["region"], families["signup_date"], families["weekly_usage_gb"],
            families["tenure_months"]) == ("string", "string", "date", "array", "number")
    assert table.array_lengths == {"weekly_usage_gb": 4}
    assert set(table.null_counts) == {"satisfaction_score", "days_since_last_login"}


def test_older_version_and_timestamp_are_read_as_of_then(spark: SparkSession, demo_table: str,
                                                         tmp_path: Path) -> None:
    table = read_feature_table(spark, make_config(demo_table, tmp_path, ["data.version=0"]).data, "logistic")
    assert table.ref.version == 0 and table.rows_read == DEMO_ROWS
    first_commit = table_versions(spark, demo_table)[0][1]
    ref = resolve_version(spark, demo_table, first_commit.isoformat())
    assert ref.version == 0


def test_explicit_features_and_squared_label(spark: SparkSession, demo_table: str, tmp_path: Path) -> None:
    config = make_config(demo_table, tmp_path, ["data.label=lifetime_value",
                                                "data.features=[tenure_months, monthly_charges]"])
    table = read_feature_table(spark, config.data, "squared")
    assert table.features == ("tenure_months", "monthly_charges")
    assert table.rows_dropped_null == 0  # nulls only in unused columns
    assert [f.dataType.simpleString() for f in table.dataframe.schema.fields] == ["double"] * 3


def test_rows_appended_after_pinning_are_not_seen(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "growing")
    spark.range(100).selectExpr("id % 2 AS label", "CAST(id AS DOUBLE) AS x").write.format("delta").save(path)
    config = make_config(path, tmp_path, ["data.label=label", "data.exclude=[]"])
    table = read_feature_table(spark, config.data, "logistic")
    spark.range(50).selectExpr("id % 2 AS label", "CAST(id AS DOUBLE) AS x").write.format("delta") \
        .mode("append").save(path)
    assert table.dataframe.count() == 100


def _run(demo_or_path: str, tmp_path: Path, *overrides: str) -> int:
    argv = table_overrides(demo_or_path, tmp_path)
    for override in overrides:
        argv += ["--set", override]
    return run_job(train_sweep.main, [*argv, "--set", "train.epochs=1"])


@pytest.fixture(scope="module")
def bad_tables(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    tables = {
        "parquet": str(root / "plain_parquet"),
        "three_classes": str(root / "three_classes"),
        "one_class": str(root / "one_class"),
        "all_null": str(root / "all_null"),
        "with_nulls": str(root / "with_nulls"),
        "string_feature": str(root / "string_feature"),
        "with_nan": str(root / "with_nan"),
        "tiny": str(root / "tiny"),
        "missing_file": str(root / "missing_file"),
        "huge": str(root / "huge"),
    }
    spark.range(10).selectExpr("id % 2 AS label", "id * 1.0 AS x").write.parquet(tables["parquet"])
    spark.range(30).selectExpr("id % 3 AS label", "id * 1.0 AS x").write.format("delta").save(tables["three_classes"])
    spark.range(30).selectExpr("1 AS label", "id * 1.0 AS x").write.format("delta").save(tables["one_class"])
    spark.range(10).selectExpr("id % 2 AS label", "CAST(NULL AS DOUBLE) AS x").write.format("delta") \
        .save(tables["all_null"])
    spark.range(10).selectExpr("id % 2 AS label", "IF(id < 3, NULL, id * 1.0) AS x").write.format("delta") \
        .save(tables["with_nulls"])
    spark.range(10).selectExpr("id % 2 AS label", "id * 1.0 AS x", "map('k', id) AS tags") \
        .write.format("delta").save(tables["string_feature"])
    spark.range(400).selectExpr("id % 2 AS label", "CASE WHEN id = 3 THEN double('NaN') WHEN id = 4 THEN "
                                "double('Infinity') WHEN id = 5 THEN double('-Infinity') ELSE id * 1.0 END AS x") \
        .write.format("delta").save(tables["with_nan"])
    spark.range(3).selectExpr("id % 2 AS label", "id * 1.0 AS x").write.format("delta").save(tables["tiny"])
    spark.range(400).selectExpr("id % 2 AS label", "id * 1.0 AS x").repartition(2).write.format("delta") \
        .save(tables["missing_file"])
    next(Path(tables["missing_file"]).glob("part-*.parquet")).unlink()  # a data file lost from under the log
    spark.range(400).selectExpr("id % 2 AS label", "(id % 9) * 1e200 AS x").write.format("delta") \
        .save(tables["huge"])
    return tables


@pytest.mark.parametrize(
    ("table_key", "overrides", "message"),
    [
        ("missing", [], "table {path} not found: the path does not exist"),
        ("name", [], "table nodb.nothing not found in the catalog: this session's catalog is in-memory"),
        ("parquet", ["data.label=label"], "table {path} is not a Delta table (no _delta_log)"),
        ("demo", ["data.version=9"], "table {path}: version 9 is not available; available versions: 0..1"),
        ("demo", ["data.version=1999-01-01"], "table {path}: no version at or before 1999-01-01"),
        ("demo", ["data.version=yesterday"], "data.version 'yesterday' is neither a version number nor"),
        ("demo", ["data.label=is_churn"], "label column 'is_churn' not found; available columns: ["),
        ("demo", ["data.features=[tenure_months, tenure]"], "feature column(s) ['tenure'] not found"),
        ("string_feature", ["data.label=label", "data.features=[x, tags]"],
         "feature column 'tags' has type map<string,bigint>: type map<string,bigint> is not supported"),
        ("three_classes", ["data.label=label"],
         "label 'label' has values other than 0 and 1 (min 0.0, max 2.0, 3 distinct)"),
        ("one_class", ["data.label=label"], "label 'label' has a single class (1.0)"),
        ("with_nulls", ["data.label=label", "data.on_null=fail"],
         "3 rows have nulls (x: 3) and data.on_null is 'fail'"),
        ("all_null", ["data.label=label"], "no rows left after dropping 10 rows with nulls"),
        ("with_nan", ["data.label=label", "data.on_invalid=fail"],
         "NaN or infinite values (x: 3) and data.on_invalid is 'fail'; set data.on_invalid=drop"),
        ("tiny", ["data.label=label"], "validation rows, fewer than data.min_validation_rows=30: too few to judge"),
        ("missing_file", ["data.label=label"], "is missing; read an earlier version (data.version=N)"),
        ("huge", ["data.label=label"], "column(s) ['x'] have values too large to standardize"),
    ],
)
def test_bad_input_exits_non_zero_naming_table_and_column(
    demo_table: str, bad_tables: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    table_key: str, overrides: list[str], message: str,
) -> None:
    path = {"demo": demo_table, "missing": str(tmp_path / "nowhere"), "name": "nodb.nothing"}.get(table_key) \
        or bad_tables[table_key]
    exit_code = _run(path, tmp_path, *overrides)
    captured = capsys.readouterr()
    assert exit_code == 2
    assert message.format(path=path) in captured.err
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err


def test_nan_and_infinite_values_are_dropped_and_counted(spark: SparkSession, bad_tables: dict[str, str],
                                                         tmp_path: Path) -> None:
    config = make_config(bad_tables["with_nan"], tmp_path, ["data.label=label", "data.exclude=[]"])
    table = read_feature_table(spark, config.data, "logistic")
    assert (table.rows_read, table.rows_dropped_invalid, table.rows_dropped_null) == (400, 3, 0)
    assert table.invalid_counts == {"x": 3} and table.rows == 397 == table.dataframe.count()
    assert table.dropped_summary() == "dropped 3 rows with NaN/inf (x: 3)"


def test_invalid_configuration_fails_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = run_job(train_sweep.main, ["--set", "train.epochs=zero"])
    assert exit_code == 2
    assert "error: conf: train.epochs = 'zero': Input should be a valid integer" in capsys.readouterr().err


def test_one_arrow_pass_counts_what_a_spark_aggregation_counts(spark: SparkSession, tmp_path: Path) -> None:
    """The data check's statistics (one mapInArrow pass) equal the same rules written as one Spark aggregation,
    on nulls, NaN, +-inf, arrays of other lengths, NaN and null elements, null arrays and odd column names."""
    rows = spark.range(600, numPartitions=3).selectExpr(
        "CAST(id % 3 AS DOUBLE) AS label",
        "CASE WHEN id % 7 = 0 THEN NULL WHEN id % 11 = 0 THEN CAST('NaN' AS DOUBLE) "
        "WHEN id % 13 = 0 THEN CAST('-Infinity' AS DOUBLE) ELSE id / 10 END AS `monthly.charges`",
        "CASE WHEN id % 17 = 0 THEN NULL ELSE CAST(id % 5 AS INT) END AS `we``ird`",
        "CASE WHEN id % 19 = 0 THEN NULL WHEN id % 23 = 0 THEN array(1.0D, 2.0D) "
        "WHEN id % 29 = 0 THEN array(1.0D, CAST('NaN' AS DOUBLE), 3.0D) "
        "WHEN id % 31 = 0 THEN array(1.0D, NULL, 3.0D) ELSE array(id, 1.0D, 2.0D) END AS weekly",
        "CASE WHEN id % 37 = 0 THEN NULL ELSE 'a' END AS plan",
        "CASE WHEN id % 41 = 0 THEN NULL WHEN id % 43 = 0 THEN CAST('NaN' AS DOUBLE) WHEN id % 47 = 0 "
        "THEN CAST('-Infinity' AS DOUBLE) WHEN id % 53 = 0 THEN -1.0D ELSE CAST(id % 2 AS DOUBLE) END AS w")
    families = {"monthly.charges": "number", "we`ird": "number", "weekly": "array", "plan": "string"}
    types = {f.name: f.dataType for f in rows.schema.fields}
    for binary in (True, False):
        profile = Profile("label", column("label"), families, types, {"weekly": 3}, [], binary_label=binary,
                          weight="w" if binary else None)
        stats = profile.collect(rows)
        clean = profile.clean_label
        reference = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            *[F.sum(null.cast("long")).alias(f"null::{c}") for c, null in profile.is_null.items()],
            *[F.sum(invalid.cast("long")).alias(f"invalid::{c}") for c, invalid in profile.is_invalid.items()],
            F.sum(F.when(profile.any_null, 1).otherwise(0)).alias("rows_with_null"),
            F.sum(F.when(~profile.any_null & profile.any_invalid, 1).otherwise(0)).alias("rows_with_invalid"),
            F.count_distinct(clean).alias("distinct"), F.min(clean).alias("min"), F.max(clean).alias("max"),
            F.sum(F.when(clean.isNotNull() & ~clean.isin(0.0, 1.0), 1).otherwise(0)).alias("not_binary"),
        ).collect()[0].asDict()
        assert stats.rows == reference["rows"] == 600
        assert stats.null_counts == {c: reference[f"null::{c}"] for c in profile.is_null if reference[f"null::{c}"]}
        assert stats.invalid_counts == {c: reference[f"invalid::{c}"] for c in profile.is_invalid
                                        if reference[f"invalid::{c}"]}
        assert set(stats.null_counts) == {"monthly.charges", "we`ird", "weekly"}
        assert set(stats.invalid_counts) == {"monthly.charges", "weekly"}
        assert (stats.rows_with_null, stats.rows_with_invalid) == (reference["rows_with_null"],
                                                                   reference["rows_with_invalid"])
        assert stats.label == {"distinct": reference["distinct"], "min": reference["min"], "max": reference["max"],
                               "not_binary": reference["not_binary"] if binary else 0}
        assert stats.label["distinct"] == 3 and stats.label_values == (0.0, 1.0, 2.0)
        weight = column("w").cast("double")
        weights = rows.agg(F.sum(weight.isNull().cast("long")).alias("null"),
                           F.sum((weight < 0).cast("long")).alias("negative"),
                           F.sum((F.isnan(weight) | (F.abs(weight) == float("inf"))).cast("long")).alias("invalid"),
                           F.sum((weight > 0).cast("long")).alias("positive")).collect()[0].asDict()
        assert stats.weight_counts == (weights if binary else None)
        assert min(weights.values()) > 0


def test_string_value_counts_of_every_column_in_one_pass(spark: SparkSession) -> None:
    """Each string column's value counts (nulls as a value) equal a Spark group-by's; a column with more distinct
    values than the limit, in the table or in one partition alone, comes back as None (it is hashed)."""
    rows = spark.range(300, numPartitions=3).selectExpr(
        "CASE WHEN id % 7 = 0 THEN NULL ELSE CAST(id % 4 AS STRING) END AS `plan.type`",
        "CAST(id AS STRING) AS id_like",  # 100 distinct per partition
        "CASE WHEN id < 100 THEN 'a' WHEN id < 200 THEN 'b' ELSE CAST(id % 3 AS STRING) END AS spread")
    counts = string_counts(rows, ["plan.type", "id_like", "spread"], limit=5)
    expected = {r[0]: r[1] for r in rows.groupBy(column("plan.type")).count().collect()}
    assert counts["plan.type"] == expected and None in expected and len(expected) == 5
    assert counts["id_like"] is None
    # 5 distinct in the table, at most 3 in any partition: exact; with a limit of 4, hashed after the merge
    assert counts["spread"] == {"a": 100, "b": 100, "0": 33, "1": 33, "2": 34}
    assert string_counts(rows, ["spread"], limit=4) == {"spread": None}


def test_common_lengths_of_every_array_column_in_one_pass(spark: SparkSession) -> None:
    """The most common length per array column (ties: the shorter; nulls have none) equals a Spark group-by's."""
    rows = spark.range(200, numPartitions=3).selectExpr(
        "CASE WHEN id % 3 = 0 THEN NULL WHEN id % 2 = 0 THEN array(1.0D, 2.0D) ELSE array(1.0D) END AS `a.b`",
        "CASE WHEN id < 100 THEN array(1, 2, 3) ELSE array(1, 2) END AS tie",
        "CAST(NULL AS ARRAY<DOUBLE>) AS never")
    names = ["a.b", "tie", "never"]
    expected = {}
    for name in names:
        counts = rows.where(column(name).isNotNull()).groupBy(F.size(column(name)).alias("n")).count().collect()
        expected[name] = int(min(counts, key=lambda r: (-int(r["count"]), int(r["n"])))["n"]) if counts else 0
    assert common_lengths(rows, names) == expected == {"a.b": 1, "tie": 2, "never": 0}
