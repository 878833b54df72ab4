"""Per-rate summaries, per-epoch result rows and the parent run's summary metrics, as plain Python values.

Non-finite values (a diverged rate's last epoch, epochs never run) become ``None``: MLflow's UI and
downstream SQL both handle a missing value better than ``NaN`` or ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.features.columns import ColumnChoice
from pipelines.features.encoding import TableEncoding
from pipelines.sgd.metrics import ALL_CURVES, MAIN_METRIC
from pipelines.sweep.grid import GridPoint, point_labels
from pipelines.sweep.outcome import GridOutcome, RateResult
from pipelines.sweep.pbt import LINEAGE_COLUMNS
from pipelines.sweep.state import GridState
from pipelines.sweep.status import FINAL_STATUSES, RUNNING


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def rate_label(learning_rate: float) -> str:
    """``lr=0.0316``: the rate with 4 significant digits (run names, legends)."""
    return f"lr={learning_rate:.4g}"


def rate_summary(outcome: GridOutcome, loss: str) -> list[dict[str, Any]]:
    """One row per grid point: ``learning_rate, reg_param, l1_ratio, status, epochs_run, kept_epoch, train_loss,
    val_loss, <main>, best``.

    Losses and the main metric are taken at the kept epoch (a diverged rate's last good epoch).
    """
    main = MAIN_METRIC[loss]
    best = outcome.best_index
    rows = []
    for index, rate in enumerate(outcome.rates):
        final = rate.final_metrics()
        rows.append({
            "learning_rate": rate.learning_rate,
            "reg_param": rate.reg_param,
            "l1_ratio": rate.l1_ratio,
            "status": rate.status,
            "epochs_run": rate.epochs_run,
            "kept_epoch": rate.kept_epoch,
            "train_loss": finite_or_none(final.get("train_loss", math.nan)),
            "val_loss": finite_or_none(final.get("val_loss", math.nan)),
            main: finite_or_none(final.get(main, math.nan)),
            "best": index == best,
        })
    return rows


def format_summary(rows: Sequence[dict[str, Any]], loss: str) -> str:
    """A fixed-width text table of :func:`rate_summary` rows; the best point is marked with ``*``."""
    main = MAIN_METRIC[loss]
    header = ("", "point", "status", "epochs", "train_loss", "val_loss", main)
    lines = [header]
    labels = point_labels([GridPoint(row["learning_rate"], row["reg_param"], row["l1_ratio"]) for row in rows])
    for row, label in zip(rows, labels, strict=True):
        lines.append((
            "*" if row["best"] else "",
            label,
            str(row["status"]),
            str(row["epochs_run"]),
            _number(row["train_loss"]),
            _number(row["val_loss"]),
            _number(row[main]),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = [" ".join(cell.rjust(width) if i > 2 else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
               for line in lines]
    return "\n".join([aligned[0], "-" * len(aligned[0]), *aligned[1:]])


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def epoch_rows(rate: RateResult, first: int = 1, last: int | None = None) -> list[dict[str, Any]]:
    """``{"epoch": e, <curve>: value or None, "<curve>_std": ...}`` for every epoch in ``first..last`` the rate ran."""
    rows = []
    ran = max(rate.epochs_run, rate.stopped_epoch or 0)  # a rate that diverged in its first epoch has a row for it
    for epoch in range(first, min(ran, last if last is not None else ran) + 1):
        row: dict[str, Any] = {"epoch": epoch}
        for name in ALL_CURVES:
            curve = rate.curves.get(name)
            row[name] = None if curve is None else finite_or_none(float(curve[epoch - 1]))
        for name in ("train_loss", "val_loss"):
            row[f"{name}_std"] = finite_or_none(float(rate.curves_std[name][epoch - 1]))
        for name, values in rate.schedule.items():  # population-based training's lineage (pipelines.sweep.pbt)
            value = finite_or_none(float(values[epoch - 1]))
            row[LINEAGE_COLUMNS[name]] = int(value) if value is not None and name == "pbt_exploited_from" else value
        rows.append(row)
    return rows


def results_rows(outcome: GridOutcome, loss: str, *, sweep_id: str, parent_run_id: str | None,
                 child_run_ids: Sequence[str | None], data_table: str, data_version: int, round_number: int = 1,
                 first_epoch: int = 1, last_epoch: int | None = None, final: bool = True,
                 best: bool = True, data_since_version: int | None = None,
                 registration: str | None = None) -> list[dict[str, Any]]:
    """The results table's rows: one per ``(sweep_id, round, learning_rate, epoch)`` an epoch was run.

    ``child_run_ids`` are aligned with ``outcome.rates`` (None where unknown). Only epochs
    ``first_epoch..last_epoch`` are included (a journal append). With ``final`` False (the sweep is still
    training) ``is_best`` is left empty and a rate still running has status ``running``; the sweep's end
    sets them (:func:`final_rows`). ``best`` False (a round before the last) flags no rate as the best.
    ``registration``: the registry's decision, on the best rate's rows (as :func:`final_rows` sets it).
    """
    if len(child_run_ids) != len(outcome.rates):
        raise ValueError(f"{len(child_run_ids)} child run ids for {len(outcome.rates)} rates")
    best_index = outcome.best_index if final and best else None
    rows = []
    for index, (rate, child_run_id) in enumerate(zip(outcome.rates, child_run_ids, strict=True)):
        for epoch_row in epoch_rows(rate, first_epoch, last_epoch):
            rows.append({
                "sweep_id": sweep_id,
                "round": round_number,
                "learning_rate": rate.learning_rate,
                "reg_param": rate.reg_param,
                "l1_ratio": rate.l1_ratio,
                **epoch_row,
                "status": rate.status,
                "kept_epoch": rate.kept_epoch,
                "is_best": index == best_index if final else None,
                "loss": loss,
                "parent_run_id": parent_run_id,
                "child_run_id": child_run_id,
                "data_table": data_table,
                "data_version": data_version,
                "data_since_version": data_since_version,
                "registration": registration if index == best_index else None,
            })
    return rows


def final_rows(outcome: GridOutcome, *, sweep_id: str, round_number: int, parent_run_id: str | None,
               child_run_ids: Sequence[str | None], is_final_round: bool,
               registration: str | None = None) -> list[dict[str, Any]]:
    """Per rate of a finished round: the columns the sweep's end sets on all its result rows.

    ``registration``: the registry's decision on the best point (``registered:7``, ``kept_champion:``,
    ``skipped:``), set on the best point's rows.
    """
    best = outcome.best_index if is_final_round else None
    return [{"sweep_id": sweep_id, "round": round_number, "learning_rate": rate.learning_rate,
             "reg_param": rate.reg_param, "l1_ratio": rate.l1_ratio, "status": rate.status,
             "kept_epoch": rate.kept_epoch, "is_best": index == best,
             "parent_run_id": parent_run_id, "child_run_id": child_run_id,
             "registration": registration if index == best else None}
            for index, (rate, child_run_id) in enumerate(zip(outcome.rates, child_run_ids, strict=True))]


def summary_metrics(outcome: GridOutcome, *, train_rows: int, validation_rows: int,
                    suggested_learning_rate: float | None = None, rounds: int = 1) -> dict[str, float]:
    """The parent run's model metrics: best rate and its metrics, rate counts by status, the data sizes."""
    metrics: dict[str, float] = {
        "row_passes": float(outcome.row_passes), "full_grid_row_passes": float(outcome.full_grid_row_passes),
        "train_rows": float(train_rows), "validation_rows": float(validation_rows),
    }
    if suggested_learning_rate is not None:
        metrics["suggested_learning_rate"] = suggested_learning_rate
        metrics["rounds"] = float(rounds)
    for status in FINAL_STATUSES:
        metrics[f"rates_{status}"] = float(sum(rate.status == status for rate in outcome.rates))
    best = outcome.best
    if best is not None:
        metrics["best_learning_rate"] = best.learning_rate
        metrics["best_reg_param"] = best.reg_param
        metrics["best_l1_ratio"] = best.l1_ratio
        metrics["best_epoch"] = float(best.kept_epoch)
        metrics.update({f"best_{name}": value for name, value in best.final_metrics().items()})
    return metrics


def progress_line(state: GridState) -> str:
    """``epoch 3/10: best lr=0.0316 val_loss=0.41234; 7/8 rates active`` for the last recorded epoch."""
    epoch = state.recorded_epoch
    rows_of = state.rows_of
    val = np.array([np.mean(state.curves["val_loss"][epoch, rows_of[rate]]) for rate in range(state.n_rates)])
    active = int(np.sum(state.status == RUNNING))
    if np.all(np.isnan(val)):
        return f"epoch {epoch}/{state.epochs}: no point evaluated; {active}/{state.n_rates} points active"
    best = int(np.nanargmin(val))
    return (f"epoch {epoch}/{state.epochs}: best {point_labels(state.points)[best]} val_loss={val[best]:.5f}; "
            f"{active}/{state.n_rates} points active")


def feature_rows(columns: ColumnChoice, encoding: TableEncoding) -> list[dict[str, Any]]:
    """One row per table column the sweep considered: its family, encoding and model inputs, or why it was
    left out (the parent run's ``features.json``)."""
    rows: list[dict[str, Any]] = [
        {"column": c.column, "family": columns.used.get(c.column, c.kind), "encoding": c.describe(),
         "inputs": c.width, "left_out": ""} for c in encoding.columns]
    rows += [{"column": name, "family": "", "encoding": "", "inputs": 0, "left_out": reason}
             for name, reason in columns.left_out.items()]
    return rows
