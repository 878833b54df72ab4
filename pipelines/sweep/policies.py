"""Per-epoch decisions across the grid: divergence, early stopping, successive halving, the adaptive rate and
population-based training's exploit (:mod:`pipelines.sweep.pbt`).

Each policy looks at one epoch's evaluation of the rates still running (:class:`EpochView`: one value per
*rate*, the mean over its seeds, and the per-row validation losses) and returns a :class:`Decision`: which
rates to stop and with which status, whose models to keep, new rate multipliers. The sweep loop applies the
decisions in order (a rate one policy stops is not shown to the next); policies never touch the engine.

Every policy's state is a few arrays (:meth:`to_arrays`/:meth:`load_arrays`), saved with the checkpoints so
a resumed sweep takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.schedules import AdaptiveRateState
from pipelines.sweep.status import DIVERGED, EARLY_STOPPED, PRUNED

if TYPE_CHECKING:
    from pipelines.sweep.pbt import Exploit, PopulationBasedTraining

_NO_RATES = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class EpochView:
    """One epoch's evaluation of the running rates.

    ``rates`` ``(R,)`` rate indices; ``train_loss`` and ``val_loss`` ``(R,)`` their means over seeds;
    ``rows`` ``(R*S,)`` the model rows of these rates and ``row_val_loss`` their validation losses.
    """

    epoch: int
    rates: IntArray
    train_loss: FloatArray
    val_loss: FloatArray
    rows: IntArray
    row_val_loss: FloatArray

    def only(self, rates: IntArray, rows_of: IntArray) -> EpochView:
        """The view restricted to ``rates`` (a subset of :attr:`rates`)."""
        keep = np.isin(self.rates, rates)
        row_keep = np.isin(self.rows, rows_of[rates].ravel())
        return EpochView(self.epoch, self.rates[keep], self.train_loss[keep], self.val_loss[keep],
                         self.rows[row_keep], self.row_val_loss[row_keep])


@dataclass(frozen=True)
class Decision:
    """What a policy decided at one epoch; the loop applies it."""

    stop: IntArray = field(default_factory=lambda: _NO_RATES)  # rates to stop ...
    status: str = ""  # ... with this status
    keep: IntArray | None = None  # rates whose models at this epoch become their kept models
    rate_multipliers: FloatArray | None = None  # (K,) new per-row multipliers of the base rates
    exploit: Exploit | None = None  # population-based training: points that take others' models


class Policy(Protocol):
    """Decides after each evaluated epoch (epoch 0, the initial models, is shown to :meth:`observe_initial`)."""

    def observe_initial(self, view: EpochView) -> None: ...

    def decide(self, view: EpochView) -> Decision: ...

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]: ...

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None: ...


def diverged(train_loss: FloatArray, best_train_loss: FloatArray, factor: float) -> np.ndarray:
    """Rates whose training loss is not finite or exceeds ``factor`` times their best loss so far.

    ``best_train_loss`` includes the loss of the initial models (epoch 0).
    """
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(train_loss) | (train_loss > factor * best_train_loss)


@dataclass
class Divergence:
    """Stop a rate (``diverged``) whose training loss is not finite or exceeds ``factor`` x its best."""

    n_rates: int
    factor: float
    best_train_loss: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        self.best_train_loss = np.full(self.n_rates, np.inf)

    def observe_initial(self, view: EpochView) -> None:
        self.best_train_loss[view.rates] = np.fmin(self.best_train_loss[view.rates], view.train_loss)

    def decide(self, view: EpochView) -> Decision:
        is_diverged = diverged(view.train_loss, self.best_train_loss[view.rates], self.factor)
        finite = np.where(np.isfinite(view.train_loss), view.train_loss, np.inf)
        self.best_train_loss[view.rates] = np.fmin(self.best_train_loss[view.rates], finite)
        return Decision(stop=view.rates[is_diverged], status=DIVERGED)

    def inherit(self, targets: IntArray, sources: IntArray) -> None:
        """``targets`` hold copies of the models of ``sources``: they are judged against their best loss."""
        self.best_train_loss[targets] = self.best_train_loss[sources]

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"best_train_loss": self.best_train_loss}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        self.best_train_loss = np.asarray(arrays["best_train_loss"], dtype=np.float64).copy()


@dataclass
class KeepLatest:
    """Without early stopping, each healthy rate keeps the models of its latest epoch."""

    def observe_initial(self, view: EpochView) -> None:
        return None

    def decide(self, view: EpochView) -> Decision:
        return Decision(keep=view.rates)

    def inherit(self, targets: IntArray, sources: IntArray) -> None:
        return None

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        return None


@dataclass
class EarlyStopping:
    """Stop a rate when its validation loss has not improved by ``min_delta`` for ``patience`` epochs.

    A rate keeps the models of its best epoch (the decision's ``keep`` lists the rates that just improved).
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

    def observe_initial(self, view: EpochView) -> None:
        return None

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

    def decide(self, view: EpochView) -> Decision:
        improved, stop = self.update(view.epoch, view.rates, view.val_loss)
        return Decision(stop=stop, status=EARLY_STOPPED, keep=improved)

    def inherit(self, targets: IntArray, sources: IntArray) -> None:
        """``targets`` took other models: they start counting afresh (their next epoch is an improvement, whose
        models they keep, and they get ``patience`` epochs at their new rate)."""
        self.best_loss[targets], self.best_epoch[targets], self.waited[targets] = np.inf, 0, 0

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "waited": self.waited}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        self.best_loss = np.asarray(arrays["best_loss"], dtype=np.float64).copy()
        self.best_epoch = np.asarray(arrays["best_epoch"], dtype=np.int64).copy()
        self.waited = np.asarray(arrays["waited"], dtype=np.int64).copy()


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

    def observe_initial(self, view: EpochView) -> None:
        return None

    def decide(self, view: EpochView) -> Decision:
        return Decision(stop=self.prune(view.epoch, view.rates, view.val_loss), status=PRUNED)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        return None


@dataclass
class AdaptiveRate:
    """scikit-learn's ``adaptive`` learning rate per model row: divide by 5 after ``n_iter_no_change``
    epochs without a validation improvement of ``tol`` (:class:`~pipelines.sgd.schedules.AdaptiveRateState`)."""

    n_rows: int
    n_iter_no_change: int
    tol: float
    state: AdaptiveRateState = field(init=False)

    def __post_init__(self) -> None:
        self.state = AdaptiveRateState.start(self.n_rows, self.n_iter_no_change)

    def observe_initial(self, view: EpochView) -> None:
        return None

    def decide(self, view: EpochView) -> Decision:
        self.state.update_rows(view.rows, view.row_val_loss, self.tol)
        return Decision(rate_multipliers=self.state.multipliers.copy())

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"multipliers": self.state.multipliers, "best_losses": self.state.best_losses,
                "epochs_without_improvement": self.state.epochs_without_improvement}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        self.state.multipliers = np.asarray(arrays["multipliers"], dtype=np.float64).copy()
        self.state.best_losses = np.asarray(arrays["best_losses"], dtype=np.float64).copy()
        self.state.epochs_without_improvement = np.asarray(arrays["epochs_without_improvement"], np.int64).copy()


@dataclass
class Policies:
    """The policies of a sweep, in the order they decide (a rate one stops is not shown to the next)."""

    divergence: Divergence
    selection: EarlyStopping | KeepLatest
    pruning: SuccessiveHalving | None = None
    adaptive: AdaptiveRate | None = None
    population: PopulationBasedTraining | None = None  # last: it ranks the points the others left running

    def ordered(self) -> Iterator[tuple[str, Policy]]:
        """``(name, policy)`` pairs in decision order."""
        yield "divergence", self.divergence
        yield "selection", self.selection
        if self.pruning is not None:
            yield "pruning", self.pruning
        if self.adaptive is not None:
            yield "adaptive", self.adaptive
        if self.population is not None:
            yield "pbt", self.population

    def inherit(self, targets: IntArray, sources: IntArray) -> None:
        """The policies' per-point state after ``targets`` took copies of the models of ``sources``."""
        self.divergence.inherit(targets, sources)
        self.selection.inherit(targets, sources)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Every policy's state, keys ``<policy>.<array>``."""
        return {f"{name}.{key}": value.copy() for name, policy in self.ordered()
                for key, value in policy.to_arrays().items()}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`to_arrays` saved."""
        for name, policy in self.ordered():
            prefix = f"{name}."
            policy.load_arrays({key.removeprefix(prefix): value for key, value in arrays.items()
                                if key.startswith(prefix)})
