"""Past sweeps from the lakehouse, the record (MLflow is not asked, so these work while it is down):
``lrsweep show [SWEEP_ID]`` and ``lrsweep history``, and the same as DataFrames from Python.

    from pipelines.orchestration.results import show_sweep, sweep_history
    summary = show_sweep(config)             # the newest sweep of output.results_table, one row per grid point
    history = sweep_history(config)          # the best learning rate of every finished sweep of data.table

Both run the queries of :mod:`pipelines.lakehouse.history`, which the notebooks run too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.config import Config
from pipelines.lakehouse.history import learning_rate_history, sweep_summary
from pipelines.reporting.tables import format_summary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def show_sweep(config: Config, sweep_id: str | None = None, spark: SparkSession | None = None) -> pd.DataFrame:
    """One row per grid point of ``sweep_id`` (default ``sweep.id``, else the newest sweep) at its kept epoch:
    ``sweep_id, round, learning_rate, reg_param, l1_ratio, status, epochs_run, kept_epoch, best, loss, ...,
    train_loss, val_loss, val_<metric>...`` (see :func:`pipelines.lakehouse.history.sweep_summary`)."""
    return sweep_summary(spark or _spark(config), config.output.results_table, sweep_id or config.sweep.id)


def sweep_history(config: Config, spark: SparkSession | None = None) -> pd.DataFrame:
    """One row per finished sweep of ``data.table``, oldest table version first: its best point's learning rate
    and validation loss and the registry's decision (:func:`pipelines.lakehouse.history.history_sql`)."""
    return learning_rate_history(spark or _spark(config), config.output.results_table, config.data.table)


def describe_sweep(summary: pd.DataFrame, results_table: str) -> list[str]:
    """``lrsweep show``'s lines: what the sweep trained on, its summary table, where its rows are."""
    first = summary.iloc[0]
    loss = str(first["loss"])
    statuses = summary["status"].value_counts()
    counts = ", ".join(f"{count} {status}" for status, count in statuses.items())
    rounds = f", round {int(first['round'])}" if int(first["round"]) > 1 else ""
    lines = [f"sweep {first['sweep_id']}: {first['data_table']} at version {first['data_version']}, {loss} loss"
             f"{rounds}, {len(summary)} point{'' if len(summary) == 1 else 's'} ({counts})",
             format_summary(summary_rows(summary), loss)]
    best = summary[summary["best"]]
    if len(best) and isinstance(best.iloc[0]["registration"], str):  # "registered:7", "kept_champion:", ...
        decision, _, version = best.iloc[0]["registration"].partition(":")
        lines.append(f"registry: {decision}{f' (version {version})' if version else ''}")
    lines.append(f"parent run {first['parent_run_id']}; rows in {results_table}")
    return lines


def describe_history(history: pd.DataFrame, data_table: str, results_table: str) -> list[str]:
    """``lrsweep history``'s lines: a table of the sweeps of ``data_table``, oldest table version first."""
    if history.empty:
        return [f"no finished sweeps of {data_table} in {results_table}"]
    text = history.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.5g}")
    return [f"{len(history)} sweeps of {data_table} (from {results_table}):", text]


def summary_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as :func:`~pipelines.reporting.tables.format_summary` takes them (NaN -> None)."""
    return [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
            for row in summary.to_dict("records")]


def _spark(config: Config) -> SparkSession:
    from pipelines.session import get_spark

    return get_spark(config.spark)
