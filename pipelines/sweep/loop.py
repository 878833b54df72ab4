"""The epoch loop over the grid: train, record every rate's curves, apply the policies.

Rows of the model matrix are ``(rate, seed)`` pairs; policies and results work per rate on the mean
over its seeds (with the standard deviation recorded). Per epoch ``e`` (1..E) every running rate gets

* ``train_loss``: the training objective (mean loss + penalty) at the models reached after epoch e;
* ``val_loss`` and the task metrics on the validation split (``val_accuracy``, ``val_auc``,
  ``val_log_loss`` for logistic; ``val_rmse``, ``val_mae``, ``val_r2`` for squared).

A rate stops when it diverges (:func:`~pipelines.sweep.policies.diverged`), when early stopping or
pruning says so; its curves end there, it keeps the models of its last good (or best) epoch, and it
consumes no compute afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.distributed.engine import Evaluation, GridTrainer
from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.schedules import AdaptiveRateState
from pipelines.sweep.policies import (
    COMPLETED,
    DIVERGED,
    EARLY_STOPPED,
    PRUNED,
    RUNNING,
    EarlyStopping,
    SuccessiveHalving,
    diverged,
)

VALIDATION_METRICS = {
    "logistic": ("loss", "log_loss", "accuracy", "auc"),
    "squared": ("loss", "rmse", "mae", "r2"),
}


@dataclass(frozen=True)
class LoopPolicies:
    """What the loop applies after every epoch."""

    divergence_factor: float = 4.0
    early_stopping: EarlyStopping | None = None
    pruning: SuccessiveHalving | None = None
    adaptive: AdaptiveRateState | None = None
    adaptive_tol: float = 1e-4


@dataclass
class RateResult:
    """One learning rate's curves and outcome (means over its seeds)."""

    learning_rate: float
    status: str
    epochs_run: int
    stopped_epoch: int | None  # the epoch a policy stopped it at (diverged_at_epoch for diverged)
    kept_epoch: int  # the epoch whose models are kept (best epoch when early-stopped)
    curves: dict[str, FloatArray]  # name -> (E,), NaN where not run; "train_loss", "val_loss", "val_*"
    curves_std: dict[str, FloatArray]  # standard deviation across seeds, same shapes
    weights: FloatArray  # (d,) kept model of the first seed, on standardized features
    intercept: float

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

    @property
    def best_index(self) -> int | None:
        """The rate with the lowest validation loss at its kept epoch among completed/early-stopped."""
        candidates = [(r.final_metrics().get("val_loss", np.inf), i) for i, r in enumerate(self.rates)
                      if r.status in (COMPLETED, EARLY_STOPPED) and r.kept_epoch >= 1]
        finite = [(loss, i) for loss, i in candidates if np.isfinite(loss)]
        return min(finite)[1] if finite else None

    @property
    def best(self) -> RateResult | None:
        index = self.best_index
        return None if index is None else self.rates[index]


def run_grid(
    trainer: GridTrainer,
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    epochs: int,
    loss: str,
    policies: LoopPolicies,
    progress: Callable[[str], None] | None = None,
) -> GridOutcome:
    """Train every rate of the grid for ``epochs`` epochs; rows are ordered rate-major, seed-minor."""
    started = time.perf_counter()
    n_rates, n_seeds = len(learning_rates), len(seeds)
    rows_of = np.arange(n_rates * n_seeds).reshape(n_rates, n_seeds)
    metric_names = ["train_loss", *(f"val_{m}" for m in VALIDATION_METRICS[loss])]
    curves = {name: np.full((epochs, n_rates * n_seeds), np.nan) for name in metric_names}
    status = np.array([RUNNING] * n_rates, dtype=object)
    stopped_epoch: list[int | None] = [None] * n_rates
    kept_epoch = np.zeros(n_rates, dtype=np.int64)
    best_train = np.full(n_rates, np.inf)
    kept_models: dict[int, tuple[FloatArray, float]] = {}
    epoch_seconds: list[float] = []

    def running() -> IntArray:
        return np.flatnonzero(status == RUNNING)

    def rows(rates: IntArray) -> IntArray:
        return np.sort(rows_of[rates].ravel())

    def record(epoch: int, evaluation: Evaluation, before: tuple[FloatArray, FloatArray]) -> None:
        """Store the evaluation of the models after ``epoch`` (0 = initial) and apply the policies."""
        evaluated_rows = evaluation.rows
        rates = np.unique(evaluated_rows // n_seeds)
        position = {int(row): i for i, row in enumerate(evaluated_rows)}
        values = {"train_loss": evaluation.train_loss,
                  **{f"val_{m}": evaluation.validation[m] for m in VALIDATION_METRICS[loss]}}

        def per_rate(name: str) -> FloatArray:
            return np.array([np.mean([values[name][position[int(r)]] for r in rows_of[rate]]) for rate in rates])

        train_loss = per_rate("train_loss")
        if epoch == 0:
            best_train[rates] = np.fmin(best_train[rates], train_loss)
            return
        for name in metric_names:
            for row in evaluated_rows:
                curves[name][epoch - 1, row] = values[name][position[int(row)]]

        def keep(rate_indices: IntArray) -> None:
            for rate in rate_indices:
                first_row = int(rows_of[rate][0])
                kept_models[int(rate)] = (before[0][position[first_row]].copy(),
                                          float(before[1][position[first_row]]))
                kept_epoch[rate] = epoch

        is_diverged = diverged(train_loss, best_train[rates], policies.divergence_factor)
        best_train[rates] = np.fmin(best_train[rates], np.where(np.isfinite(train_loss), train_loss, np.inf))
        for rate in rates[is_diverged]:
            status[rate], stopped_epoch[rate] = DIVERGED, epoch
        healthy = rates[~is_diverged]
        val_loss = per_rate("val_loss")[~is_diverged]
        if policies.early_stopping is None:
            keep(healthy)
        else:
            improved, stop = policies.early_stopping.update(epoch, healthy, val_loss)
            keep(improved)
            for rate in stop:
                status[rate], stopped_epoch[rate] = EARLY_STOPPED, epoch
        if policies.pruning is not None:
            still = np.isin(healthy, running())
            for rate in policies.pruning.prune(epoch, healthy[still], val_loss[still]):
                status[rate], stopped_epoch[rate] = PRUNED, epoch
        if policies.adaptive is not None:
            healthy_rows = rows(healthy)
            row_loss = np.array([values["val_loss"][position[int(r)]] for r in healthy_rows])
            state = policies.adaptive
            multipliers = state.multipliers.copy()
            sub = AdaptiveRateState(state.multipliers[healthy_rows], state.best_losses[healthy_rows],
                                    state.epochs_without_improvement[healthy_rows], state.n_iter_no_change,
                                    state.divisor)
            multipliers[healthy_rows] = sub.update(row_loss, policies.adaptive_tol)
            state.best_losses[healthy_rows] = sub.best_losses
            state.epochs_without_improvement[healthy_rows] = sub.epochs_without_improvement
            state.multipliers = multipliers
            trainer.models.rate_multipliers = multipliers.copy()

    if policies.adaptive is not None:
        trainer.models.rate_multipliers = policies.adaptive.multipliers.copy()
    evaluated = rows(running())
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        before = trainer.snapshot(evaluated)
        if epoch > 1 and policies.pruning is not None and policies.pruning.is_rung(epoch - 1):
            # a rung: evaluate in a job of its own so pruned rates do not train this epoch
            record(epoch - 1, trainer.evaluate(evaluated), before)
            evaluated = rows(running())
            trainer.run_epoch(epoch, evaluated, [])
        else:
            train_rows = rows(running())
            evaluation = trainer.run_epoch(epoch, train_rows, evaluated)
            record(epoch - 1, evaluation, before)
            stopped_now = np.setdiff1d(train_rows, rows(running()))
            if stopped_now.size:  # their epoch-`epoch` work is discarded: back to their last evaluated models
                keep_index = np.searchsorted(evaluated, stopped_now)
                trainer.restore(stopped_now, before[0][keep_index], before[1][keep_index])
            evaluated = rows(running())
        epoch_seconds.append(time.perf_counter() - tick)
        if progress is not None and epoch > 1:
            progress(_progress_line(epoch - 1, epochs, learning_rates, curves, rows_of, status))
    if evaluated.size:
        before = trainer.snapshot(evaluated)
        record(epochs, trainer.evaluate(evaluated), before)
    if progress is not None:
        progress(_progress_line(epochs, epochs, learning_rates, curves, rows_of, status))
    for rate in running():
        status[rate] = COMPLETED

    results = []
    for rate, learning_rate in enumerate(learning_rates):
        rate_rows = rows_of[rate]
        rate_curves = {name: _mean_or_nan(curve[:, rate_rows]) for name, curve in curves.items()}
        std_curves = {name: _std_or_nan(curve[:, rate_rows]) for name, curve in curves.items()}
        ran = np.flatnonzero(~np.isnan(rate_curves["val_loss"]))
        weights, intercept = kept_models.get(rate, (np.zeros(trainer.blocks.n_features), 0.0))
        results.append(RateResult(
            learning_rate=float(learning_rate), status=str(status[rate]),
            epochs_run=int(ran[-1] + 1) if ran.size else 0, stopped_epoch=stopped_epoch[rate],
            kept_epoch=int(kept_epoch[rate]), curves=rate_curves, curves_std=std_curves,
            weights=weights, intercept=float(intercept)))
    return GridOutcome(
        rates=results, epochs=epochs, seeds=tuple(int(s) for s in seeds), jobs=trainer.jobs,
        row_passes=trainer.row_passes,
        full_grid_row_passes=epochs * n_rates * n_seeds * trainer.blocks.total_train_rows,
        seconds=time.perf_counter() - started, epoch_seconds=epoch_seconds)


def _mean_or_nan(values: FloatArray) -> FloatArray:
    """Row-wise mean over seeds; NaN where any seed has no value (a stopped rate stops all its seeds)."""
    result: FloatArray = values.mean(axis=1)
    return result


def _std_or_nan(values: FloatArray) -> FloatArray:
    result: FloatArray = values.std(axis=1) if values.shape[1] > 1 else np.where(
        np.isnan(values[:, 0]), np.nan, 0.0)
    return result


def _progress_line(epoch: int, epochs: int, learning_rates: Sequence[float], curves: dict[str, FloatArray],
                   rows_of: IntArray, status: np.ndarray) -> str:
    val = np.array([np.mean(curves["val_loss"][epoch - 1, rows_of[r]]) for r in range(len(learning_rates))])
    active = int(np.sum(status == RUNNING))
    if np.all(np.isnan(val)):
        return f"epoch {epoch}/{epochs}: no rate evaluated; {active}/{len(learning_rates)} rates active"
    best = int(np.nanargmin(val))
    return (f"epoch {epoch}/{epochs}: best lr={learning_rates[best]:.4g} val_loss={val[best]:.5f}; "
            f"{active}/{len(learning_rates)} rates active")
