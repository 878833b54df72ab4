"""Where the engine's tasks run (train.executor): the driver gives the Spark path's bits, checkpoints included.

A grid whose tasks run in the driver (the blocks collected once) must equal the same grid run through Spark
jobs bit for bit, and a driver sweep stopped at an epoch boundary and resumed must equal the uninterrupted
Spark sweep: curves, kept models, statuses, job and row-pass counts, results rows. ``driver`` on blocks larger
than the driver may hold exits 2 before any block is built.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from jobs import train_sweep
from pipelines.cli import run_job
from pipelines.config import Config
from pipelines.distributed.blocks import collect_arrays
from pipelines.distributed.executors import DriverExecutor, SparkExecutor
from pipelines.errors import DataError, TerminatedError
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.signals import StopRequest
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.orchestration.training import local_master, prepare_data, train_grid
from pipelines.sweep.grid import joint_grid
from tests.conftest import make_config, table_overrides
from tests.sweeps import assert_same_outcome, sweep_rows

EXPERIMENT = "it-executors"


def _config(table: str, workdir: Path, sweep_id: str, *overrides: str) -> Config:
    return make_config(table, workdir, [
        "data.label=label", "data.exclude=[]", "train.epochs=6", "train.checkpoint_every=2",
        "train.num_partitions=3", "train.batch_size=64", "sweep.learning_rates=[0.01, 0.1, 1.0, 40.0]",
        f"sweep.id={sweep_id}", f"tracking.experiment={EXPERIMENT}", "tracking.register_when=never", *overrides])


def _sweep(spark: SparkSession, config: Config, stop_at: int | None = None) -> tuple[SweepReport | None, list[str]]:
    """The sweep and its printed lines; with ``stop_at``, stopped like SIGTERM does once that epoch is reported."""
    lines: list[str] = []
    stop = StopRequest()

    def progress(line: str) -> None:
        lines.append(line)
        if stop_at is not None and line.startswith(f"epoch {stop_at}/"):
            stop.request(signal.SIGTERM)

    if stop_at is None:
        return run_tracked_sweep(spark, config, progress=progress, stop=stop), lines
    with pytest.raises(TerminatedError, match=f"at epoch {stop_at}; rerun with sweep.id="):
        run_tracked_sweep(spark, config, progress=progress, stop=stop)
    return None, lines


@pytest.mark.parametrize("settings", [
    ["train.optimizer=adam", "sweep.early_stopping={enabled: true, patience: 2}", "train.sync_every=4"],
    ["train.algorithm=gd", "train.optimizer=momentum", "train.batch_fraction=0.7"],
], ids=["local_sgd", "gd"])
def test_a_driver_sweep_equals_the_spark_sweep_and_resumes_bit_for_bit(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path, settings: list[str],
) -> None:
    table = synthetic_tables["logistic"]
    config = _config(table, tmp_path, "spark", "train.executor=spark", *settings)
    through_spark, spark_lines = _sweep(spark, config)
    assert through_spark is not None
    assert [line for line in spark_lines if line.startswith("executor: ")] == [
        "executor: spark (train.executor=spark; 1,946 training rows x 4 model rows x 5 inputs = 38,920 cells)"]
    assert any(rate.status == "completed" for rate in through_spark.outcome.rates)

    # the same grid on the same cached blocks, its tasks run in the driver: the same bits
    prepared = prepare_data(spark, read_feature_table(spark, config.data, config.model.loss), config.data,
                            config.features, config.train, model_rows=4)
    try:
        assert isinstance(prepared.executor, SparkExecutor)
        in_driver = train_grid(replace(prepared, executor=DriverExecutor.collected(prepared.blocks)), config.problem,
                               config.train, config.sweep, joint_grid(config.sweep.grid(), config.penalty_axis()))
    finally:
        prepared.blocks.release()
    assert_same_outcome(in_driver, through_spark.outcome, same_jobs=True)

    # a driver sweep stopped after epoch 3 (a checkpoint at 2, the stop saves 3) and resumed: the same bits again
    resumed_config = _config(table, tmp_path, "resumed", "train.executor=driver", *settings)
    _, stopped_lines = _sweep(spark, resumed_config, stop_at=3)
    assert [line for line in stopped_lines if line.startswith("executor: ")] == [
        "executor: driver (train.executor=driver; 1,946 training rows x 4 model rows x 5 inputs = 38,920 cells)"]
    resumed, _ = _sweep(spark, resumed_config)
    assert resumed is not None and resumed.resumed_from_epoch == 3
    assert_same_outcome(resumed.outcome, through_spark.outcome, same_jobs=True)
    pd.testing.assert_frame_equal(sweep_rows(spark, config.output.results_table, "resumed"),
                                  sweep_rows(spark, config.output.results_table, "spark"))


def test_auto_with_the_local_master_collects_the_blocks_once_and_runs_in_the_driver_whatever_the_cells(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
) -> None:
    """The suite's session is local: its executors share the driver's cores, so ``auto`` takes the driver above
    ``train.driver_max_cells`` too (the threshold is for other masters, tested without Spark)."""
    assert local_master(spark)
    config = _config(synthetic_tables["logistic"], tmp_path, "auto")
    table = read_feature_table(spark, config.data, config.model.loss)
    train = config.train.model_copy(update={"driver_max_cells": 38_919})
    small = prepare_data(spark, table, config.data, config.features, train, model_rows=4)
    try:
        assert isinstance(small.executor, DriverExecutor)
        assert small.executor_choice.line() == (
            "executor: driver (auto: 1,946 training rows x 4 model rows x 5 inputs = 38,920 cells; a local master's "
            "executors share this host's cores, so the driver's threads do the same work without a job per epoch)")
        # the driver's arrays are the cached blocks' own, partition by partition
        collected = collect_arrays(small.blocks)
        assert [part.partition for part in small.executor.partitions] == [part.partition for part in collected]
        for ours, cached in zip(small.executor.partitions, collected, strict=True):
            np.testing.assert_array_equal(ours.X_train, cached.X_train)
            np.testing.assert_array_equal(ours.y_val, cached.y_val)
        assert small.executor.train_rows == small.blocks.train_rows
    finally:
        small.blocks.release()


def test_driver_on_blocks_larger_than_the_driver_may_hold_exits_2_before_building_them(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = ["data.label=label", "data.exclude=[]", "train.executor=driver", "train.driver_max_bytes=50000"]
    code = run_job(train_sweep.main, [*table_overrides(synthetic_tables["logistic"], tmp_path),
                                      *[arg for setting in settings for arg in ("--set", setting)]])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2, errors
    assert len(errors) == 1 and "2,400 rows x 5 inputs: train.executor=driver: the blocks would take about " \
        "112.5 KiB in the driver, above its limit of 48.8 KiB (train.driver_max_bytes" in errors[0], errors
    # refused before a block is built: nothing more is cached than the table's read
    config = make_config(synthetic_tables["logistic"], tmp_path, settings)
    table = read_feature_table(spark, config.data, config.model.loss)
    cached = spark.sparkContext._jsc.sc().getPersistentRDDs().size()
    with pytest.raises(DataError, match="above its limit"):
        prepare_data(spark, table, config.data, config.features, config.train)
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == cached
