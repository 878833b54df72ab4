"""A tracked learning-rate range test: read the pinned table, run Smith's test on Spark, log it as one run.

    config -> lakehouse.reader (pinned version) -> orchestration.training (features, blocks, range test)
           -> tracking (one run: curves per step, suggestion, figure)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import prepare_data, range_test
from pipelines.reporting.figures import range_test_figure
from pipelines.sweep.range_test import RangeTestResult
from pipelines.tracking.range_test import log_range_test
from pipelines.tracking.runs import TAG_ROLE
from pipelines.tracking.store import TrackingStore, code_version, connect


@dataclass(frozen=True)
class RangeTestReport:
    """What a tracked range test did."""

    run_id: str
    result: RangeTestResult
    table: str
    table_version: int
    seconds: float


def run_tracked_range_test(spark: SparkSession, config: Config, progress: Callable[[str], None] | None = print,
                           store: TrackingStore | None = None) -> RangeTestReport:
    """Run ``range_test.*`` on ``data.table`` with the model and optimizer of the sweep; log one MLflow run.

    Raises
    ------
    LrsweepError
        Bad table or tracking store.
    """
    started = time.perf_counter()
    say = progress or (lambda line: None)
    store = store or connect(config.tracking)  # fail on a bad store before any training
    table = read_feature_table(spark, config.data, config.model.loss)
    settings = config.range_test
    say(f"range test: {table.ref.identifier} at version {table.ref.version}, {table.rows} rows, rates "
        f"{settings.min_lr:.3g}..{settings.max_lr:.3g} over {settings.num_steps} steps")
    prepared = prepare_data(spark, table, config.data, config.features, config.train, config.model.class_weight)
    try:
        result = range_test(prepared, config.problem, config.train, settings)
    finally:
        prepared.blocks.release()
    params = {
        "table": table.ref.identifier, "table_version": str(table.ref.version), "label": table.label,
        "loss": config.model.loss, "reg_param": repr(config.model.reg_param),
        "l1_ratio": repr(config.model.l1_ratio), "optimizer": config.train.optimizer.name,
        "batch_size": str(config.train.batch_size), "seed": str(config.train.seed),
        "min_lr": repr(settings.min_lr), "max_lr": repr(settings.max_lr), "num_steps": str(settings.num_steps),
        "smoothing": repr(settings.smoothing), "stop_factor": repr(settings.stop_factor),
    }
    run_id = store.call("runs", lambda: log_range_test(
        store.client, store.experiment_id, result, range_test_figure(result), params=params,
        tags={TAG_ROLE: "range_test", "lrsweep.code_version": code_version()}))
    return RangeTestReport(run_id, result, table.ref.identifier, table.ref.version, time.perf_counter() - started)
