"""The epoch loop over the grid: train, record every rate's curves, let the policies decide, apply.

Per epoch ``e`` (1..E) every running rate gets

* ``train_loss``: the training objective (mean loss + penalty) at the models reached after epoch e, its mean
  loss exact or progressive (summed while epoch e trained: ``train.train_loss``,
  :attr:`~pipelines.distributed.strategies.Strategy.train_loss`);
* ``val_loss`` and the task metrics on the validation split
  (:data:`~pipelines.sgd.metrics.VALIDATION_METRICS`);

and epoch 0 records the initial models. A rate stops when a policy says so (divergence, early stopping,
pruning); its curves end there, it keeps the models of its last good (or best) epoch, and it consumes no
compute afterwards.

Under population-based training (``policies.population``, :mod:`pipelines.sweep.pbt`) the loop also records
which rate each point trained every epoch at, and applies an exploit after the epoch that decided it: the
targets' model rows become copies of their sources' (weights, optimizer state) and train on at the explored
rates, all in the driver, between two jobs.

The loop resumes from any state saved at an epoch boundary (``state.trained_epoch``): a resumed sweep runs
exactly the jobs an uninterrupted one would have run from there, so its curves and models are the same bits.
After every epoch it calls ``on_boundary(boundary)`` (:class:`Boundary`): the caller prints progress, updates
the live view and writes checkpoints there, and may raise to stop the sweep at that safe point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.distributed.engine import Evaluation, GridTrainer
from pipelines.sgd._types import FloatArray
from pipelines.sgd.metrics import VALIDATION_METRICS
from pipelines.sgd.regularization import Penalties, Regularization
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.pbt import Exploit
from pipelines.sweep.policies import Policies
from pipelines.sweep.snapshot import GridSnapshot
from pipelines.sweep.state import GridState


@dataclass(frozen=True)
class Boundary:
    """The grid between two epochs (or at its end), as the loop hands it to ``on_boundary``."""

    state: GridState
    trainer: GridTrainer
    policies: Policies

    def capture(self) -> GridSnapshot:
        """A copy of everything needed to continue from here (see :class:`GridSnapshot`)."""
        return GridSnapshot.capture(self.state, self.trainer, self.policies)


BoundaryHook = Callable[[Boundary], None]


def run_grid(trainer: GridTrainer, state: GridState, policies: Policies,
             on_boundary: BoundaryHook | None = None) -> GridOutcome:
    """Train the grid from ``state`` to the last epoch (see the module docstring)."""
    started = time.perf_counter()
    if policies.adaptive is not None:
        trainer.set_rate_multipliers(policies.adaptive.state.multipliers)
    for epoch in range(state.trained_epoch + 1, state.epochs + 1):
        if not state.running().size:
            break
        tick = time.perf_counter()
        evaluated = state.rows(state.running())
        before = trainer.snapshot(evaluated)
        exploit = None
        if epoch > 1 and policies.pruning is not None and policies.pruning.is_rung(epoch - 1):
            # a rung: evaluate in a job of its own so pruned rates do not train this epoch
            _record(trainer, state, policies, epoch - 1, trainer.evaluate(evaluated), before)
            trainer.run_epoch(epoch, state.rows(state.running()), [])
        else:
            evaluation = trainer.run_epoch(epoch, evaluated, evaluated)
            exploit = _record(trainer, state, policies, epoch - 1, evaluation, before)
            stopped_now = np.setdiff1d(evaluated, state.rows(state.running()))
            if stopped_now.size:  # their epoch-`epoch` work is discarded: back to their last evaluated models
                keep_index = np.searchsorted(evaluated, stopped_now)
                trainer.restore(stopped_now, before[0][keep_index], before[1][keep_index])
        if state.lineage is not None:
            _note_trained(state, policies, epoch)
            if exploit is not None:
                _apply_exploit(trainer, state, policies, exploit)
        state.trained_epoch = epoch
        state.epoch_seconds.append(time.perf_counter() - tick)
        if on_boundary is not None:
            on_boundary(Boundary(state, trainer, policies))
    if not state.complete and state.running().size:
        evaluated = state.rows(state.running())
        _record(trainer, state, policies, state.trained_epoch, trainer.evaluate(evaluated),
                trainer.snapshot(evaluated))
    state.finish()
    if on_boundary is not None:
        on_boundary(Boundary(state, trainer, policies))
    n_rows = state.n_rates * len(state.seeds)
    return state.outcome(trainer.jobs, trainer.row_passes,
                         state.epochs * n_rows * trainer.total_train_rows, time.perf_counter() - started)


def _record(trainer: GridTrainer, state: GridState, policies: Policies, epoch: int, evaluation: Evaluation,
            before: tuple[FloatArray, FloatArray]) -> Exploit | None:
    """Store the evaluation of the models after ``epoch`` (0 = initial) and apply the policies' decisions; return
    population-based training's exploit, which the caller applies once the epoch's rollbacks are done."""
    values = {"train_loss": evaluation.train_loss,
              **{f"val_{name}": evaluation.validation[name] for name in VALIDATION_METRICS[state.loss]}}
    view = state.record(epoch, evaluation.rows, values)
    if epoch == 0:
        for _, policy in policies.ordered():
            policy.observe_initial(view)
        return None
    exploit = None
    for _, policy in policies.ordered():
        if not view.rates.size:
            break
        decision = policy.decide(view)
        state.apply(decision, epoch, evaluation.rows, before[0], before[1])
        if decision.rate_multipliers is not None:
            trainer.set_rate_multipliers(decision.rate_multipliers)
        exploit = decision.exploit or exploit
        view = view.only(np.setdiff1d(view.rates, decision.stop), state.rows_of)
    return exploit


def _note_trained(state: GridState, policies: Policies, epoch: int) -> None:
    """The lineage: the points still running trained ``epoch`` at the population's current values."""
    assert state.lineage is not None and policies.population is not None
    points = state.running()
    state.lineage.trained(epoch, points, policies.population.learning_rates[points],
                          policies.population.reg_params[points])


def _apply_exploit(trainer: GridTrainer, state: GridState, policies: Policies, exploit: Exploit) -> None:
    """The targets' model rows become their sources' (seed by seed) and train on at the explored values."""
    assert policies.population is not None
    target_rows, source_rows = state.rows_of[exploit.targets].ravel(), state.rows_of[exploit.sources].ravel()
    trainer.copy_rows(target_rows, source_rows)
    seeds = len(state.seeds)
    penalties = Penalties.of([Regularization(float(reg), float(l1_ratio))
                              for reg, l1_ratio in zip(exploit.reg_params, exploit.l1_ratios, strict=True)
                              for _ in range(seeds)])
    trainer.set_hyperparameters(target_rows, np.repeat(exploit.learning_rates, seeds), penalties)
    policies.population.adopt(exploit)
    policies.inherit(exploit.targets, exploit.sources)
    state.exploit(exploit)
