"""Per-rate summaries and per-epoch result rows of a sweep, as plain Python values.

Non-finite values (a diverged rate's last epoch, epochs never run) become ``None``: MLflow's UI and
downstream SQL both handle a missing value better than ``NaN`` or ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pipelines.sweep.loop import GridOutcome, RateResult

#: The validation metrics besides ``val_loss`` that each loss reports.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "logistic": ("val_log_loss", "val_accuracy", "val_auc"),
    "squared": ("val_rmse", "val_mae", "val_r2"),
}
#: The metric a person looks at first.
MAIN_METRIC = {"logistic": "val_auc", "squared": "val_rmse"}
#: Every metric column of the results table (both losses, so one table holds any sweep).
RESULT_METRICS: tuple[str, ...] = ("train_loss", "val_loss", *TASK_METRICS["logistic"], *TASK_METRICS["squared"])


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def rate_label(learning_rate: float) -> str:
    """``lr=0.0316``: the rate with 4 significant digits (run names, legends)."""
    return f"lr={learning_rate:.4g}"


def rate_summary(outcome: GridOutcome, loss: str) -> list[dict[str, Any]]:
    """One row per rate: ``learning_rate, status, epochs_run, kept_epoch, train_loss, val_loss, <main>, best``.

    Losses and the main metric are taken at the kept epoch (a diverged rate's last good epoch).
    """
    main = MAIN_METRIC[loss]
    best = outcome.best_index
    rows = []
    for index, rate in enumerate(outcome.rates):
        final = rate.final_metrics()
        rows.append({
            "learning_rate": rate.learning_rate,
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
    """A fixed-width text table of :func:`rate_summary` rows; the best rate is marked with ``*``."""
    main = MAIN_METRIC[loss]
    header = ("", "learning_rate", "status", "epochs", "train_loss", "val_loss", main)
    lines = [header]
    for row in rows:
        lines.append((
            "*" if row["best"] else "",
            f"{row['learning_rate']:.4g}",
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


def epoch_rows(rate: RateResult) -> list[dict[str, Any]]:
    """``{"epoch": e, <metric>: value or None, "<metric>_std": ...}`` for every epoch the rate ran (1..)."""
    rows = []
    for epoch in range(1, rate.epochs_run + 1):
        row: dict[str, Any] = {"epoch": epoch}
        for name in RESULT_METRICS:
            curve = rate.curves.get(name)
            row[name] = None if curve is None else finite_or_none(float(curve[epoch - 1]))
        for name in ("train_loss", "val_loss"):
            row[f"{name}_std"] = finite_or_none(float(rate.curves_std[name][epoch - 1]))
        rows.append(row)
    return rows


def results_rows(outcome: GridOutcome, loss: str, *, sweep_id: str, parent_run_id: str,
                 child_run_ids: Sequence[str], data_table: str, data_version: int) -> list[dict[str, Any]]:
    """The results table's rows: one per ``(sweep_id, learning_rate, epoch)`` an epoch was run.

    ``child_run_ids`` are aligned with ``outcome.rates``.
    """
    if len(child_run_ids) != len(outcome.rates):
        raise ValueError(f"{len(child_run_ids)} child run ids for {len(outcome.rates)} rates")
    best = outcome.best_index
    rows = []
    for index, (rate, child_run_id) in enumerate(zip(outcome.rates, child_run_ids, strict=True)):
        for epoch_row in epoch_rows(rate):
            rows.append({
                "sweep_id": sweep_id,
                "learning_rate": rate.learning_rate,
                **epoch_row,
                "status": rate.status,
                "kept_epoch": rate.kept_epoch,
                "is_best": index == best,
                "loss": loss,
                "parent_run_id": parent_run_id,
                "child_run_id": child_run_id,
                "data_table": data_table,
                "data_version": data_version,
            })
    return rows
