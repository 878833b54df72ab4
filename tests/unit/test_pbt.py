"""Population-based training over in-memory blocks run by the driver executor (no Spark): the ranking, exploit
and explore rules, their determinism, copies of every optimizer's state, divergence and early stopping, resume,
and the replay of a winner's lineage as a ``piecewise`` single-rate sweep, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipelines.distributed.blocks import PartitionBlocks
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.executors import DriverExecutor
from pipelines.distributed.strategies import GradientDescent, LocalSGD
from pipelines.sgd.optimizers import OPTIMIZER_NAMES, OptimizerSpec
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec
from pipelines.sweep.grid import GridPoint, row_penalties
from pipelines.sweep.loop import Boundary, run_grid
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.pbt import PopulationBasedTraining
from pipelines.sweep.policies import Divergence, EarlyStopping, KeepLatest, Policies
from pipelines.sweep.snapshot import GridSnapshot
from pipelines.sweep.state import GridState, grid_state
from pipelines.sweep.status import COMPLETED, DIVERGED, RUNNING
from tests.sweeps import assert_same_outcome

RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _partitions(noise: float = 0.2, seed: int = 5) -> list[PartitionBlocks]:
    """Two partitions of a logistic problem with 6 inputs, labels flipped with probability ``noise``."""
    rng = np.random.default_rng(seed)
    parts = []
    for partition in range(2):
        X = rng.normal(size=(300, 6))
        y = (rng.random(300) < 1 / (1 + np.exp(-(X @ np.array([1.5, -2.0, 0.5, 0.0, 1.0, -0.5]))))).astype(float)
        y = np.where(rng.random(300) < noise, 1.0 - y, y)
        parts.append(PartitionBlocks(partition, X[:240], y[:240], X[240:], y[240:]))
    return parts


@dataclass
class Sweep:
    trainer: GridTrainer
    state: GridState
    policies: Policies


def _sweep(points: list[GridPoint], *, epochs: int = 10, optimizer: str = "sgd", algorithm: str = "local_sgd",
           schedule: ScheduleSpec | None = None, pbt: dict[str, object] | None = None, patience: int | None = None,
           seeds: tuple[int, ...] = (42,), divergence_factor: float = 4.0, grid: bool = False) -> Sweep:
    """A population of ``points`` (a plain grid with ``grid``) over two in-memory partitions."""
    executor = DriverExecutor.in_memory(_partitions(), 2)
    problem = TrainingProblem("logistic", True, Regularization(), OptimizerSpec(optimizer),
                              schedule or ScheduleSpec(), 0.0)
    models = ModelRows.zeros([p.learning_rate for p in points for _ in seeds], [s for _ in points for s in seeds],
                             row_penalties(points, len(seeds)), executor.n_features, problem.optimizer)
    strategy = GradientDescent() if algorithm == "gd" else LocalSGD(batch_size=16)
    trainer = GridTrainer(executor, problem, strategy, models, epochs)
    population = None if grid else PopulationBasedTraining.start(
        [p.learning_rate for p in points], [p.reg_param for p in points], epochs=epochs,
        **{"interval": 2, "quantile": 0.25, "factors": (0.8, 1.2), "resample_probability": 0.25, "seed": 7,
           **(pbt or {})})
    policies = Policies(Divergence(len(points), divergence_factor),
                        EarlyStopping(len(points), patience) if patience else KeepLatest(), population=population)
    state = grid_state(points, seeds, epochs, "logistic", executor.n_features, population=not grid)
    return Sweep(trainer, state, policies)


def _run(sweep: Sweep, on_boundary: object = None) -> GridOutcome:
    return run_grid(sweep.trainer, sweep.state, sweep.policies, on_boundary)  # type: ignore[arg-type]


def _points(rates: tuple[float, ...] = RATES) -> list[GridPoint]:
    return [GridPoint(rate) for rate in rates]


# ------------------------------------------------------------------------------------------- the rules


def _population(seed: int = 7, epochs: int = 10, **settings: object) -> PopulationBasedTraining:
    return PopulationBasedTraining.start(RATES, [0.0] * len(RATES), epochs=epochs, **{
        "interval": 2, "quantile": 0.25, "factors": (0.8, 1.2), "resample_probability": 0.25, "seed": seed,
        **settings})


def test_the_worst_quantile_and_every_stopped_point_copy_the_best_quantile_and_explore() -> None:
    population = _population(resample_probability=0.0)
    running = np.array([0, 1, 2, 3, 4, 6])  # 5 and 7 stopped (diverged, early-stopped)
    val_loss = np.array([0.9, 0.5, 0.3, 0.2, 0.4, np.nan])  # point 6's loss is not finite: ranked last
    exploit = population.rank(4, running, val_loss)
    assert exploit is not None and exploit.epoch == 5  # ranked after epoch 4, the copy is of epoch 5's models
    # n = floor(0.25 * 8) = 2: sources are the 2 best (3, 2), targets the 2 worst (6, 0) and the stopped (5, 7)
    assert exploit.targets.tolist() == [0, 5, 6, 7]
    assert set(exploit.sources.tolist()) <= {2, 3}
    for rate, source in zip(exploit.learning_rates, exploit.sources, strict=True):
        assert rate / RATES[source] in (pytest.approx(0.8), pytest.approx(1.2))
    assert population.learning_rates.tolist() == list(RATES)  # changed when the loop applies it (adopt)


def test_resampling_draws_log_uniformly_within_the_grids_range() -> None:
    population = _population(resample_probability=1.0, quantile=0.5)
    exploit = population.rank(2, np.arange(8), np.arange(8, dtype=float))
    assert exploit is not None and exploit.targets.tolist() == [4, 5, 6, 7]
    assert all(RATES[0] <= rate <= RATES[-1] for rate in exploit.learning_rates)
    assert not set(exploit.learning_rates.tolist()) & {RATES[s] * f for s in range(8) for f in (0.8, 1.2)}


def test_draws_are_a_function_of_seed_and_epoch_only() -> None:
    losses = np.linspace(1.0, 0.2, 8)
    first = _population(seed=3).rank(2, np.arange(8), losses)
    again = _population(seed=3).rank(2, np.arange(8), losses)
    other_seed = _population(seed=4).rank(2, np.arange(8), losses)
    other_epoch = _population(seed=3).rank(4, np.arange(8), losses)
    assert first is not None and again is not None and other_seed is not None and other_epoch is not None
    assert (first.sources.tolist(), first.learning_rates.tolist()) == (again.sources.tolist(),
                                                                       again.learning_rates.tolist())
    assert first.learning_rates.tolist() != other_seed.learning_rates.tolist()
    assert first.learning_rates.tolist() != other_epoch.learning_rates.tolist()


def test_rankings_fall_every_interval_while_a_copy_still_has_an_epoch_to_train() -> None:
    population = _population(interval=3, epochs=10)
    assert [epoch for epoch in range(11) if population.is_ranking(epoch)] == [3, 6]  # 9 + 2 > 10
    assert population.rank(5, np.arange(8), np.ones(8)) is None


# ---------------------------------------------------------------------------------- exploit in the loop


@pytest.mark.parametrize("algorithm", ["local_sgd", "gd"])
@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_an_exploited_point_continues_its_sources_models_and_optimizer_state_bit_for_bit(
        optimizer: str, algorithm: str) -> None:
    sweep = _sweep(_points(), epochs=8, optimizer=optimizer, algorithm=algorithm)
    outcome = _run(sweep)
    lineage = outcome.lineage
    assert lineage is not None
    events = np.argwhere(lineage.exploited_from >= 0)
    assert events.size, "no exploit happened"
    for epoch, target in events:
        source = int(lineage.exploited_from[epoch, target])
        # the target's models after `epoch` are the source's: the same evaluation, every metric, to the bit
        for name, curve in outcome.rates[target].curves.items():
            assert curve[epoch - 1] == outcome.rates[source].curves[name][epoch - 1] or \
                (np.isnan(curve[epoch - 1]) and np.isnan(outcome.rates[source].curves[name][epoch - 1])), name
        assert outcome.rates[target].schedule["pbt_exploited_from"][epoch - 1] == source
        assert lineage.learning_rates[epoch, target] == lineage.learning_rates[epoch, source]
        if epoch + 1 <= outcome.epochs and np.isfinite(lineage.learning_rates[epoch + 1, target]):
            # from the next epoch on it trains at its explored rate (the source's times a factor, or a draw)
            assert lineage.learning_rates[epoch + 1, target] != lineage.learning_rates[epoch, source]


def test_a_diverged_point_is_replaced_at_the_next_ranking_rather_than_lost() -> None:
    sweep = _sweep(_points((0.01, 0.03, 0.1, 0.3, 1.0, 300.0, 1000.0, 3000.0)), epochs=8, divergence_factor=1.5)
    outcome = _run(sweep)
    lineage = outcome.lineage
    assert lineage is not None
    diverged_early = np.flatnonzero(np.isnan(lineage.learning_rates[2]))
    assert diverged_early.size, "no point diverged in the first epochs"
    for point in diverged_early:
        assert (lineage.exploited_from[3, point] >= 0), f"point {point} was not replaced at the first ranking"
        assert outcome.rates[point].status in (COMPLETED, DIVERGED)
        assert np.isfinite(outcome.rates[point].curves["val_loss"][2])  # it trains again
    assert all(rate.status != RUNNING for rate in outcome.rates)


def test_an_early_stopped_point_is_revived_by_exploit_and_counts_its_patience_afresh() -> None:
    sweep = _sweep(_points(), epochs=10, patience=1, pbt={"interval": 2})
    outcome = _run(sweep)
    lineage = outcome.lineage
    assert lineage is not None
    revived = [(epoch, point) for epoch, point in np.argwhere(lineage.exploited_from >= 0)
               if np.isnan(lineage.learning_rates[epoch - 1, point])]
    assert revived, "no early-stopped point was revived"
    for epoch, point in revived:
        assert np.isfinite(outcome.rates[point].curves["val_loss"][epoch - 1])
        assert outcome.rates[point].kept_epoch >= epoch  # it keeps models of its new lineage


def test_a_joint_grid_explores_reg_param_and_the_copies_train_with_their_explored_penalty() -> None:
    points = [GridPoint(rate, reg) for rate in (0.01, 0.1, 1.0, 3.0) for reg in (1e-4, 1e-2)]
    sweep = _sweep(points, epochs=6, pbt={"quantile": 0.5})
    outcome = _run(sweep)
    assert outcome.lineage is not None and sweep.policies.population is not None
    assert (outcome.lineage.exploited_from >= 0).any()
    trained = outcome.lineage.reg_params[np.isfinite(outcome.lineage.reg_params)]
    assert set(trained.tolist()) - {1e-4, 1e-2}, "no reg_param was explored"
    assert trained.min() >= 1e-4 * 0.8**3 and trained.max() <= 1e-2 * 1.2**3
    # every model row trains with its point's current reg_param (l1_ratio 0: the L2 strength is reg_param itself)
    np.testing.assert_array_equal(sweep.trainer.models.penalties.l2, sweep.policies.population.reg_params)
    np.testing.assert_array_equal(sweep.trainer.models.learning_rates, sweep.policies.population.learning_rates)


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("stop_after", [2, 3, 5])
def test_a_resumed_population_is_the_uninterrupted_one_bit_for_bit(stop_after: int) -> None:
    reference = _run(_sweep(_points(), epochs=9, optimizer="adam", seeds=(1, 2)))
    saved: list[GridSnapshot] = []

    class StopSweepError(Exception):
        pass

    def stop(boundary: Boundary) -> None:
        if boundary.state.trained_epoch == stop_after:
            saved.append(GridSnapshot.from_arrays(boundary.capture().to_arrays()))  # the checkpoint's form
            raise StopSweepError

    with pytest.raises(StopSweepError):
        _run(_sweep(_points(), epochs=9, optimizer="adam", seeds=(1, 2)), stop)
    resumed = _sweep(_points(), epochs=9, optimizer="adam", seeds=(1, 2))
    saved[0].restore(resumed.trainer, resumed.state, resumed.policies)
    outcome = _run(resumed)
    assert_same_outcome(outcome, reference)
    assert reference.lineage is not None and outcome.lineage is not None
    for key, value in reference.lineage.to_arrays().items():
        np.testing.assert_array_equal(outcome.lineage.to_arrays()[key], value, err_msg=key)


def test_a_grid_has_no_population_and_no_schedule_in_its_outcome() -> None:
    grid = _run(_sweep(_points(), epochs=4, grid=True))
    assert grid.lineage is None and all(not rate.schedule for rate in grid.rates)
    assert "lineage.origin" not in grid_state(_points(), (42,), 4, "logistic", 6).to_arrays()


# ------------------------------------------------------------------------------------------------ replay


@pytest.mark.parametrize(("algorithm", "optimizer"), [("local_sgd", "sgd"), ("local_sgd", "adam"), ("gd", "sgd")])
def test_the_winners_lineage_replayed_as_a_piecewise_single_rate_sweep_gives_its_curves_bit_for_bit(
        algorithm: str, optimizer: str) -> None:
    population = _run(_sweep(_points(), epochs=10, optimizer=optimizer, algorithm=algorithm,
                             pbt={"quantile": 0.5, "interval": 1}))
    winner = population.best_index
    assert winner is not None and population.lineage is not None
    path = population.lineage.path(winner, population.rates[winner].kept_epoch)
    assert path.exploits, "the winner's models never changed hands: nothing to replay"
    schedule = path.schedule()
    replay = _run(_sweep([GridPoint(1.0)], epochs=path.epoch, optimizer=optimizer, algorithm=algorithm,
                         schedule=ScheduleSpec("piecewise", epochs=schedule["epochs"], rates=schedule["rates"])))
    (replayed,) = replay.rates
    for epoch in range(1, path.epoch + 1):
        holder = population.rates[int(path.holders[epoch])]
        for name, curve in replayed.curves.items():
            assert curve[epoch - 1] == holder.curves[name][epoch - 1], (name, epoch)
    assert replayed.initial == population.rates[winner].initial
    np.testing.assert_array_equal(replayed.weights, population.rates[winner].weights)
    assert replayed.intercept == population.rates[winner].intercept
