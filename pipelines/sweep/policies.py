"""Per-epoch decisions across the grid: divergence, early stopping, successive-halving pruning.

Pure functions of the curves seen so far, one value per *rate* (the mean over the rate's seeds). Each
returns the rates it stops at this epoch; the sweep loop applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipelines.sgd._types import FloatArray, IntArray

COMPLETED = "completed"
DIVERGED = "diverged"
EARLY_STOPPED = "early_stopped"
PRUNED = "pruned"
RUNNING = "running"
STATUSES = (COMPLETED, DIVERGED, EARLY_STOPPED, PRUNED)


def diverged(train_loss: FloatArray, best_train_loss: FloatArray, factor: float) -> np.ndarray:
    """Rates whose training loss is not finite or exceeds ``factor`` times their best loss so far.

    ``best_train_loss`` includes the loss of the initial models (epoch 0).
    """
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(train_loss) | (train_loss > factor * best_train_loss)


@dataclass
class EarlyStopping:
    """Stop a rate when its validation loss has not improved by ``min_delta`` for ``patience`` epochs.

    The best epoch's models are kept (the sweep loop saves them when :meth:`update` reports an
    improvement).
    """

    n_rates: int
    patience: int
    min_delta: float = 0.0
    best_loss: FloatArray = field(init=False)
    best_epoch: IntArray = field(init=False)
    waited: IntArray = field(init=False)

    def __post_init__(self) -> None:
        self.best_loss = np.full(self.n_rates, np.inf)
        self.best_epoch = np.zeros(self.n_rates, dtype=np.int64)
        self.waited = np.zeros(self.n_rates, dtype=np.int64)

    def update(self, epoch: int, rates: IntArray, val_loss: FloatArray) -> tuple[IntArray, IntArray]:
        """Record ``val_loss`` of ``rates`` at ``epoch``; return (improved rates, rates to stop)."""
        with np.errstate(invalid="ignore"):
            improved = val_loss < self.best_loss[rates] - self.min_delta
        self.best_loss[rates[improved]] = val_loss[improved]
        self.best_epoch[rates[improved]] = epoch
        self.waited[rates[improved]] = 0
        self.waited[rates[~improved]] += 1
        stop = rates[self.waited[rates] >= self.patience]
        return rates[improved], stop


@dataclass(frozen=True)
class SuccessiveHalving:
    """Rungs at epochs ``r, r*eta, r*eta^2, ...``; at each, keep the best ``ceil(n/eta)`` rates.

    ``n`` is the number of rates still running at the rung; rates are ranked by validation loss (ties by
    rate index, so the choice is deterministic). Rates stopped for other reasons are not counted.
    """

    min_epochs: int
    eta: int

    def is_rung(self, epoch: int) -> bool:
        rung = self.min_epochs
        while rung < epoch:
            rung *= self.eta
        return rung == epoch

    def prune(self, epoch: int, rates: IntArray, val_loss: FloatArray) -> IntArray:
        """The rates (among ``rates``) pruned at ``epoch``; none unless ``epoch`` is a rung."""
        if not self.is_rung(epoch) or rates.size <= 1:
            return np.zeros(0, dtype=np.int64)
        keep = math.ceil(rates.size / self.eta)
        ranking_loss = np.where(np.isfinite(val_loss), val_loss, np.inf)
        order = np.lexsort((rates, ranking_loss))
        return np.sort(rates[order[keep:]])
