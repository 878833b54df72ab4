"""Every output is checked before training, a half-created results table is resumed, and bad outcomes are recorded
honestly (issue 21, rows 3, 9, 10 and 11). Real Delta tables, a real sqlite MLflow store, the suite's Spark."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.errors import OutputError
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID
from tests.conftest import make_config

EXPERIMENT = "it-outputs"


def _config(table: str, workdir: Path, sweep_id: str, *overrides: str) -> Config:
    return make_config(table, workdir, [
        "sweep.learning_rates=[0.01, 0.1]", "train.epochs=2", f"sweep.id={sweep_id}",
        f"tracking.experiment={EXPERIMENT}", "tracking.register_when=never", *overrides])


def _statuses(config: Config, sweep_id: str) -> dict[str, str]:
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'")
    return {f"{run.data.tags.get(TAG_ROLE)}:{run.info.run_name}": run.info.status for run in runs}


def _rows(spark: SparkSession, table: str, sweep_id: str) -> list[dict[str, object]]:
    frame = spark.read.format("delta").load(table)
    return [row.asDict() for row in frame.where(frame["sweep_id"] == sweep_id).orderBy("learning_rate", "epoch")
            .collect()]


def test_a_results_table_of_another_schema_is_refused_before_training(spark: SparkSession, demo_table: str,
                                                                      tmp_path: Path) -> None:
    results = str(tmp_path / "results")
    spark.createDataFrame([(1, "a")], "id INT, name STRING").write.format("delta").save(results)
    config = _config(demo_table, tmp_path, "other-schema")
    lines: list[str] = []
    with pytest.raises(OutputError) as caught:
        run_tracked_sweep(spark, config, progress=lines.append)
    message = str(caught.value)
    assert "output.results_table" in message and results in message
    assert "sweep_id" in message and "epoch" in message  # what is missing
    assert "\n" not in message
    assert not any(line.startswith("epoch ") for line in lines), "refused after training"
    assert "RUNNING" not in _statuses(config, "other-schema").values()
    assert not list((tmp_path / "checkpoints").glob("other-schema/checkpoint-*"))


def test_a_results_table_whose_column_has_another_type_is_refused(spark: SparkSession, demo_table: str,
                                                                 tmp_path: Path) -> None:
    results = str(tmp_path / "results")
    spark.createDataFrame([("s", 1.0, "one")], "sweep_id STRING, learning_rate DOUBLE, epoch STRING") \
        .write.format("delta").save(results)
    with pytest.raises(OutputError, match=r"epoch .*string.*int"):
        run_tracked_sweep(spark, _config(demo_table, tmp_path, "typed"), progress=None)


def test_an_unwritable_checkpoint_location_is_refused_before_training(spark: SparkSession, demo_table: str,
                                                                     tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocked = tmp_path / "file-not-folder"  # root writes through permission bits: a file where a folder must be
        blocked.write_text("not a folder")
        checkpoints = blocked / "checkpoints"
    else:
        blocked = tmp_path / "read-only"
        blocked.mkdir()
        blocked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        checkpoints = blocked
    config = _config(demo_table, tmp_path, "unwritable", f"output.checkpoints={checkpoints}")
    lines: list[str] = []
    with pytest.raises(OutputError, match=r"output\.checkpoints"):
        run_tracked_sweep(spark, config, progress=lines.append)
    assert not any(line.startswith("epoch ") for line in lines), "refused after training"
    assert "RUNNING" not in _statuses(config, "unwritable").values()
    assert not (tmp_path / "results").exists()


def test_a_results_folder_without_a_commit_is_created_and_the_sweep_trains(spark: SparkSession, demo_table: str,
                                                                          tmp_path: Path) -> None:
    """What a driver killed while the journal created the table leaves: a data file and an empty
    ``_delta_log/_staged_commits``, no commit. The rerun creates the table."""
    results = tmp_path / "results"
    spark.createDataFrame([("x", 1)], "sweep_id STRING, epoch INT").coalesce(1).write.parquet(str(tmp_path / "p"))
    results.mkdir()
    for data_file in (tmp_path / "p").glob("part-*.parquet"):
        shutil.copy(data_file, results / data_file.name)
    (results / "_delta_log" / "_staged_commits").mkdir(parents=True)
    config = _config(demo_table, tmp_path, "half-created")
    report = run_tracked_sweep(spark, config, progress=None)
    rows = _rows(spark, str(results), "half-created")
    assert len(rows) == 2 * 2 and report.results_rows == 4
    assert {row["status"] for row in rows} == {"completed"}


def test_every_rate_diverging_at_once_writes_its_rows_and_says_where(spark: SparkSession, demo_table: str,
                                                                   tmp_path: Path) -> None:
    config = _config(demo_table, tmp_path, "all-diverged", "sweep.learning_rates=[1e300, 1e305]",
                     "train.optimizer=sgd", "features.standardize=false")
    report = run_tracked_sweep(spark, config, progress=None)
    assert report.outcome.best is None
    rows = _rows(spark, config.output.results_table, "all-diverged")
    assert rows, "no rows written"
    assert {row["status"] for row in rows} == {"diverged"}
    assert {row["learning_rate"] for row in rows} == {1e300, 1e305}
    assert {row["epoch"] for row in rows} == {1} and all(row["val_loss"] is None for row in rows)  # NaN at once
    statuses = _statuses(config, "all-diverged")
    assert {status for role, status in statuses.items() if role.startswith("child")} == {"FINISHED"}
    lines = report.describe()
    assert any(config.output.results_table in line and f"{len(rows)} rows" in line for line in lines), lines
