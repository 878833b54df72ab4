"""What a trained grid produced, per rate: curves, status, kept model; and which rate is best."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sweep.grid import GridPoint, point_labels

if TYPE_CHECKING:
    from pipelines.sweep.pbt import Lineage
from pipelines.sweep.status import SELECTABLE_STATUSES


@dataclass
class RateResult:
    """One grid point's curves and outcome (means over its seeds)."""

    learning_rate: float
    status: str
    epochs_run: int
    stopped_epoch: int | None  # the epoch a policy stopped it at (diverged_at_epoch for diverged)
    kept_epoch: int  # the epoch whose models are kept (best epoch when early-stopped)
    curves: dict[str, FloatArray]  # name -> (E,) epochs 1..E, NaN where not run; "train_loss", "val_*"
    curves_std: dict[str, FloatArray]  # standard deviation across seeds, same shapes
    weights: FloatArray  # (d,) kept model of the first seed, on standardized features; (C, d) multinomial
    intercept: float | FloatArray  # (C,) multinomial
    initial: dict[str, float] = field(default_factory=dict)  # the curves' values at epoch 0 (initial models)
    reg_param: float = 0.0
    l1_ratio: float = 0.0
    # population-based training: name -> (E,) epochs 1..E: "learning_rate" and "reg_param" the models were trained
    # at, "pbt_exploited_from" the point they were copied from (NaN: not copied); empty for a grid
    schedule: dict[str, FloatArray] = field(default_factory=dict)

    @property
    def point(self) -> GridPoint:
        return GridPoint(self.learning_rate, self.reg_param, self.l1_ratio)

    def final_metrics(self) -> dict[str, float]:
        """The curves at the kept epoch (NaN-free for any rate that ran at least one good epoch)."""
        if self.kept_epoch < 1:
            return {}
        return {name: float(curve[self.kept_epoch - 1]) for name, curve in self.curves.items()}


@dataclass
class GridOutcome:
    """Everything a sweep produced, ready for tracking and the results table."""

    rates: list[RateResult]
    epochs: int
    seeds: tuple[int, ...]
    jobs: int
    row_passes: int  # (model row x training row) passes actually computed
    full_grid_row_passes: int  # what the whole grid for all epochs would have cost
    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    recorded_at_ms: list[int] = field(default_factory=list)  # (E + 1,) when each epoch was recorded; 0 = not
    lineage: Lineage | None = None  # population-based training: every point's path (pipelines.sweep.pbt)

    @property
    def labels(self) -> list[str]:
        """Each point's display name (:func:`~pipelines.sweep.grid.point_labels`)."""
        return point_labels([rate.point for rate in self.rates])

    @property
    def best_index(self) -> int | None:
        """The rate with the lowest validation loss at its kept epoch among completed/early-stopped."""
        candidates = [(r.final_metrics().get("val_loss", np.inf), i) for i, r in enumerate(self.rates)
                      if r.status in SELECTABLE_STATUSES and r.kept_epoch >= 1]
        finite = [(loss, i) for loss, i in candidates if np.isfinite(loss)]
        return min(finite)[1] if finite else None

    @property
    def best(self) -> RateResult | None:
        index = self.best_index
        return None if index is None else self.rates[index]
