"""What the suite compares sweeps by: their outcomes bit for bit, and their rows in the results table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from pipelines.sweep.outcome import GridOutcome

#: Columns that name a sweep's attempt rather than what it computed.
IDENTITY_COLUMNS = ("sweep_id", "parent_run_id", "child_run_id", "written_at")


def assert_same_outcome(one: GridOutcome, other: GridOutcome, *, same_jobs: bool = False) -> None:
    """Every rate's status, epochs, curves, kept model and initial losses equal bit for bit, and the row-passes
    (and with ``same_jobs`` the Spark jobs, which a resumed sweep runs more of) equal."""
    for a, b in zip(one.rates, other.rates, strict=True):
        assert (a.status, a.epochs_run, a.stopped_epoch, a.kept_epoch) == (b.status, b.epochs_run, b.stopped_epoch,
                                                                           b.kept_epoch)
        for name in b.curves:  # NaN where not run, equal bits everywhere else
            np.testing.assert_array_equal(a.curves[name], b.curves[name], err_msg=name)
            np.testing.assert_array_equal(a.curves_std[name], b.curves_std[name], err_msg=name)
        assert a.schedule.keys() == b.schedule.keys()  # population-based training's lineage, empty for grids
        for name in b.schedule:
            np.testing.assert_array_equal(a.schedule[name], b.schedule[name], err_msg=name)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.intercept == b.intercept and a.initial == b.initial
    assert one.row_passes == other.row_passes
    if same_jobs:
        assert one.jobs == other.jobs


def sweep_rows(spark: SparkSession, results_table: str, sweep_id: str) -> pd.DataFrame:
    """One sweep's rows of the results table without its identity columns, in (round, rate, epoch) order."""
    frame = spark.read.format("delta").load(results_table)
    columns = [c for c in frame.columns if c not in IDENTITY_COLUMNS]
    rows = frame.where(frame["sweep_id"] == sweep_id).select(*columns).toPandas()
    return rows.sort_values(["round", "learning_rate", "epoch"]).reset_index(drop=True)
