"""The results table across versions of lrsweep: a table written before the final columns existed is finished
by a later sweep's end (the MERGE adds what it lacks). Real Delta table, the suite's Spark."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.lakehouse.writer import finalize_results


def test_a_results_table_without_the_newer_columns_is_finalized(spark: SparkSession, tmp_path: Path) -> None:
    table = str(tmp_path / "results")
    old = ("sweep_id STRING, round INT, learning_rate DOUBLE, reg_param DOUBLE, l1_ratio DOUBLE, epoch INT, "
           "status STRING, kept_epoch INT, is_best BOOLEAN, parent_run_id STRING, child_run_id STRING")
    rows = [("old", 1, rate, 0.0, 0.0, epoch, "running", None, None, None, None)
            for rate in (0.1, 1.0) for epoch in (1, 2)]
    spark.createDataFrame(rows, old).write.format("delta").save(table)
    finals = [{"sweep_id": "old", "round": 1, "learning_rate": rate, "reg_param": 0.0, "l1_ratio": 0.0,
               "status": "completed", "kept_epoch": 2, "is_best": rate == 0.1, "parent_run_id": "p",
               "child_run_id": f"c{rate}", "registration": "registered:3" if rate == 0.1 else None}
              for rate in (0.1, 1.0)]
    assert finalize_results(spark, finals, table, "old")
    read = spark.read.format("delta").load(table).toPandas()
    assert set(read.groupby("learning_rate")["registration"].first().items()) == {(0.1, "registered:3"), (1.0, None)}
    assert set(read["status"]) == {"completed"}
    assert not finalize_results(spark, finals, table, "old")  # nothing left to change
