"""Identifiers as users name them: odd column names train, score and are written back; odd paths and catalog
names reach Spark quoted; names equal up to case are refused at read, naming both (issue 21, rows 5, 6, 8)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Config
from pipelines.errors import DataError
from pipelines.features.columns import all_of, any_of
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.score import score_table
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from tests.conftest import make_config

# odd names and every column type through Spark's generated projections, as lrsweep runs by default
pytestmark = pytest.mark.usefixtures("generated_projections")

ODD_FEATURES = ["monthly.charges", "plan type", "prix_€", "we`ird"]
LABEL = "churn.flag"
ROW_ID = "customer.id"  # passed through to the predictions table: no space, which Delta refuses there
ROWS = 600


def _odd_rows(seed: int = 21) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    charges = rng.normal(70, 20, ROWS)
    plans = rng.choice(["basic", "standard", "premium"], ROWS)
    price = rng.normal(10, 3, ROWS)
    weird = rng.integers(0, 5, ROWS)
    z = 0.04 * (charges - 70) + np.where(plans == "basic", 0.8, -0.4) - 0.3 * (price - 10) + 0.2 * weird - 0.4
    label = (rng.random(ROWS) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return pd.DataFrame({ROW_ID: np.arange(ROWS), "monthly.charges": charges, "plan type": plans, "prix_€": price,
                         "we`ird": weird, LABEL: label})


@pytest.fixture(scope="module")
def odd(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, SweepReport, pd.DataFrame]:
    workdir = tmp_path_factory.mktemp("identifiers")
    frame = _odd_rows()
    table = str(workdir / "lake `quoted` dir" / "odd features")
    # a space in a column name needs Delta's column mapping (else DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES)
    spark.createDataFrame(frame).write.format("delta").option("delta.columnMapping.mode", "name").save(table)
    config = make_config(table, workdir, [
        f"data.label={LABEL}", f"data.exclude=['{ROW_ID}']", "sweep.learning_rates=[0.05, 0.5]", "train.epochs=4",
        "train.batch_size=32", "sweep.id=odd-1", "tracking.experiment=odd", "tracking.registered_model=odd_model",
        "tracking.register_when=always", f"output.results_table={workdir / 'out`put' / 'results'}",
        f"output.predictions_table={workdir / 'out`put' / 'predic`tions'}"])
    return config, run_tracked_sweep(spark, config, progress=None), frame


def test_columns_named_with_dots_spaces_unicode_and_backticks_train_and_are_journaled(
        spark: SparkSession, odd: tuple[Config, SweepReport, pd.DataFrame]) -> None:
    config, report, _ = odd
    assert list(report.table.features) == ODD_FEATURES
    assert {c.column: c.kind for c in report.facts.encoding.columns} == {
        "monthly.charges": "number", "plan type": "onehot", "prix_€": "number", "we`ird": "number"}
    results = spark.read.format("delta").load(config.output.results_table)
    assert results.where(F.col("sweep_id") == "odd-1").count() > 0
    assert report.registration is not None and report.registration.version is not None


def test_the_model_scores_odd_columns_and_writes_them_back(
        spark: SparkSession, odd: tuple[Config, SweepReport, pd.DataFrame]) -> None:
    config, report, frame = odd
    scored = score_table(spark, config)
    assert scored.rows == ROWS and scored.rows_without_prediction == 0
    predictions: pd.DataFrame = spark.read.format("delta").load(config.output.predictions_table).toPandas()
    predictions = predictions.sort_values(ROW_ID)
    assert {ROW_ID, LABEL, "prediction", "predicted_label"} <= set(predictions.columns)
    assert predictions[ROW_ID].tolist() == list(range(ROWS))
    model = mlflow.sklearn.load_model(f"models:/odd_model/{report.registration.version}")  # type: ignore[union-attr]
    expected = model.predict_proba(frame.sort_values(ROW_ID)[ODD_FEATURES])[:, 1]
    np.testing.assert_allclose(predictions["prediction"].to_numpy(), expected, rtol=1e-9, atol=1e-12)


def test_a_catalog_name_with_quoted_parts_is_read(spark: SparkSession,
                                                  odd: tuple[Config, SweepReport, pd.DataFrame]) -> None:
    """The session catalog takes only letters, digits and _; a name's parts still reach SQL quoted
    (``DESCRIBE DETAIL `default`.`odd_catalog_features```, ``VERSION AS OF``)."""
    config, _, frame = odd
    spark.createDataFrame(frame.head(100)).write.format("delta").option("delta.columnMapping.mode", "name") \
        .saveAsTable("default.odd_catalog_features")
    try:
        for name in ("default.`odd_catalog_features`", "odd_catalog_features"):
            data = config.data.model_copy(update={"table": name, "version": 0})
            table = read_feature_table(spark, data, "logistic")
            assert table.rows == 100 and list(table.features) == ODD_FEATURES and table.ref.version == 0
    finally:
        spark.sql("DROP TABLE IF EXISTS default.odd_catalog_features")


def _case_twins_table(root: Path) -> str:
    """A Delta table with columns ``x1`` and ``X1``: Spark's and delta-rs's writers refuse them, other writers
    (or a case-sensitive session with an older Delta) do not, so its log is written here as any writer would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "_delta_log").mkdir(parents=True)
    pq.write_table(pa.table({"x1": [1.0, 2.0, 3.0], "X1": [2.0, 1.0, 0.0], "label": [0, 1, 0]}),
                   root / "part-0.parquet")
    fields = [{"name": name, "type": kind, "nullable": True, "metadata": {}}
              for name, kind in (("x1", "double"), ("X1", "double"), ("label", "long"))]
    actions = [{"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
               {"metaData": {"id": "00000000-0000-0000-0000-000000000021", "format": {"provider": "parquet",
                                                                                      "options": {}},
                             "schemaString": json.dumps({"type": "struct", "fields": fields}),
                             "partitionColumns": [], "configuration": {}, "createdTime": 1764979200000}},
               {"add": {"path": "part-0.parquet", "partitionValues": {}, "size": (root / "part-0.parquet").stat()
                        .st_size, "modificationTime": 1764979200000, "dataChange": True}}]
    (root / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in actions))
    return str(root)


def test_columns_equal_up_to_case_are_refused_naming_both(spark: SparkSession, tmp_path: Path) -> None:
    table = _case_twins_table(tmp_path / "case_twins")
    config = make_config(table, tmp_path, ["data.label=label"])
    with pytest.raises(DataError) as caught:
        read_feature_table(spark, config.data, "logistic")
    message = str(caught.value)
    assert "'x1' and 'X1' differ only in case" in message and "\n" not in message
    assert spark.conf.get("spark.sql.caseSensitive") == "false"


def test_checks_over_thousands_of_columns_are_flat_not_chained(spark: SparkSession) -> None:
    """A chain of 2,000 ORs (or ANDs, which the optimizer makes of a filter's balanced tree) overflows the JVM's
    stack when analysed; the checks' expressions stay a few levels deep whatever the column count."""
    from pipelines.identifiers import column

    def depth(expression: str) -> int:
        deepest = level = 0
        for character in expression:
            level += character == "("
            level -= character == ")"
            deepest = max(deepest, level)
        return deepest

    names = [f"c.{i}" for i in range(2000)]
    nulls = [column(name).isNull() for name in names]
    assert depth(str(any_of(nulls))) <= 4 and depth(str(all_of(nulls))) <= 4
    assert str(any_of([])) == str(F.lit(False)) and str(all_of([])) == str(F.lit(True))
    wide = spark.range(3).select(*[F.when(F.col("id") == i % 3, None).otherwise(F.lit(1.0)).alias(name)
                                   for i, name in enumerate(names)])
    assert wide.where(any_of([column(name).isNull() for name in names])).count() == 3
    assert wide.where(~any_of([column(name).isNull() for name in names])).count() == 0
    assert wide.where(all_of([column(name).isNotNull() for name in names])).count() == 0
    assert spark.range(2).where(any_of([F.col("id") == 1])).count() == 1


def test_a_wide_table_with_dotted_names_is_packed_into_blocks(spark: SparkSession) -> None:
    """2,000 columns through the blocks' sort and Arrow packing: a projection of 2,000 aliases over the sort
    made the planner recurse per column (StackOverflowError); the rows arrive whole under their own names."""
    from pipelines.distributed.blocks import build_blocks
    from pipelines.features.encoding import ColumnEncoding, TableEncoding
    from pipelines.features.split import VALIDATION_COLUMN

    names = [f"c.{i}" for i in range(2000)]
    wide = spark.range(40).select(F.col("id").cast("double").alias("y.label"),
                                  *[(F.col("id") * (i + 1)).cast("double").alias(name) for i, name in enumerate(names)],
                                  (F.col("id") % 4 == 0).alias(VALIDATION_COLUMN))
    encoding = TableEncoding([ColumnEncoding(name, "number", 1, means=(0.0,), scales=(1.0,)) for name in names])
    blocks = build_blocks(wide, "y.label", encoding, num_partitions=2)
    try:
        assert sum(blocks.train_rows) == 30 and sum(blocks.val_rows) == 10 and blocks.n_features == 2000
    finally:
        blocks.release()
