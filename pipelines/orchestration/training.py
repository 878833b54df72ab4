"""Training steps from configuration slices: features -> cached blocks -> the engine under the sweep loop.

Each function receives only what it needs: the :class:`~pipelines.sgd.problem.TrainingProblem` (built when
the configuration was loaded) and the ``train``/``sweep`` sections. Nothing here touches MLflow or writes
tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import DataConfig, FeaturesConfig, RangeTestConfig, SweepConfig, TrainConfig
from pipelines.distributed.blocks import BlockSet, build_blocks
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.lr_finder import RangeTestStepper
from pipelines.distributed.strategies import GradientDescent, LocalSGD, Strategy
from pipelines.errors import DataError
from pipelines.features.scaling import FeatureScaling, fit_scaling
from pipelines.features.split import VALIDATION_COLUMN, with_validation_flag
from pipelines.lakehouse.reader import FeatureTable
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.schedules import ScheduleSpec
from pipelines.sweep.loop import BoundaryHook, run_grid
from pipelines.sweep.lr_finder import RangeTestResult, range_test_rates, run_range_test
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.policies import (
    AdaptiveRate,
    Divergence,
    EarlyStopping,
    KeepLatest,
    Policies,
    SuccessiveHalving,
)
from pipelines.sweep.snapshot import GridSnapshot
from pipelines.sweep.state import grid_state


@dataclass(frozen=True)
class PreparedData:
    """Training data ready for the engine: cached standardized blocks and their statistics."""

    blocks: BlockSet
    scaling: FeatureScaling


@dataclass(frozen=True)
class SweepRun:
    """One grid trained on one pinned table."""

    outcome: GridOutcome
    learning_rates: tuple[float, ...]
    scaling: FeatureScaling
    train_rows: int
    validation_rows: int
    num_partitions: int


def default_parallelism(spark: SparkSession) -> int:
    """Spark's default parallelism (2 when it cannot be read, e.g. under Spark Connect)."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:
        return int(spark.conf.get("spark.default.parallelism", "2") or 2)


def prepare_data(spark: SparkSession, table: FeatureTable, data: DataConfig, features: FeaturesConfig,
                 train: TrainConfig, num_partitions: int | None = None) -> PreparedData:
    """Split, fit standardization on the training split, pack and cache the blocks (read once).

    ``num_partitions`` (a resumed sweep's recorded partitioning) wins over ``train.num_partitions``.

    Raises
    ------
    DataError
        No training rows, or fewer validation rows than ``data.min_validation_rows``.
    """
    columns = [table.label, *table.features]
    flagged = with_validation_flag(table.dataframe, columns, data.validation_fraction, train.seed)
    scaling = fit_scaling(flagged.filter(~F.col(VALIDATION_COLUMN)), table.features, features.standardize,
                          where=f"table {table.ref.identifier} (version {table.ref.version})")
    partitions = num_partitions or train.num_partitions or default_parallelism(spark)
    blocks = build_blocks(flagged, table.label, table.features, scaling, partitions)
    where = f"table {table.ref.identifier} (version {table.ref.version})"
    if blocks.total_train_rows == 0:
        blocks.release()
        raise DataError(f"{where}: no training rows after the validation split")
    if blocks.total_val_rows < data.min_validation_rows:
        blocks.release()
        raise DataError(
            f"{where}: {table.rows} usable rows give {blocks.total_val_rows} validation rows, fewer than "
            f"data.min_validation_rows={data.min_validation_rows}: too few to judge a model; use a larger table, "
            f"raise data.validation_fraction (now {data.validation_fraction}) or lower data.min_validation_rows")
    return PreparedData(blocks, scaling)


def make_strategy(train: TrainConfig) -> Strategy:
    """The configured algorithm with its own settings."""
    if train.algorithm == "gd":
        return GradientDescent(batch_fraction=train.batch_fraction)
    return LocalSGD(batch_size=train.batch_size, sync_every=train.sync_every, sync_state=train.sync_state)


def make_policies(sweep: SweepConfig, schedule: ScheduleSpec, n_rates: int, n_rows: int) -> Policies:
    """The sweep's policies with fresh state."""
    early, pruning = sweep.early_stopping, sweep.pruning
    return Policies(
        divergence=Divergence(n_rates, sweep.divergence_factor),
        selection=EarlyStopping(n_rates, early.patience, early.min_delta) if early.enabled else KeepLatest(),
        pruning=SuccessiveHalving(pruning.min_epochs, pruning.eta) if pruning.enabled else None,
        adaptive=AdaptiveRate(n_rows, schedule.n_iter_no_change, schedule.tol) if schedule.name == "adaptive"
        else None)


def train_grid(prepared: PreparedData, problem: TrainingProblem, train: TrainConfig, sweep: SweepConfig,
               learning_rates: Sequence[float], *, resume: GridSnapshot | None = None,
               on_boundary: BoundaryHook | None = None) -> SweepRun:
    """Train ``learning_rates`` (every seed of ``sweep.seeds``) on prepared blocks for ``train.epochs``.

    With ``resume``, training continues from that epoch boundary (same bits as never stopping).
    """
    blocks = prepared.blocks
    seeds = sweep.seeds or [train.seed]
    rows_rates = [rate for rate in learning_rates for _ in seeds]
    rows_seeds = [seed for _ in learning_rates for seed in seeds]
    models = ModelRows.zeros(rows_rates, rows_seeds, blocks.n_features, problem.optimizer)
    trainer = GridTrainer(blocks, problem, make_strategy(train), models, train.epochs)
    state = grid_state(learning_rates, seeds, train.epochs, problem.loss, blocks.n_features)
    policies = make_policies(sweep, problem.schedule, len(learning_rates), len(rows_rates))
    if resume is not None:
        resume.restore(trainer, state, policies)
    outcome = run_grid(trainer, state, policies, on_boundary)
    return SweepRun(outcome, tuple(float(r) for r in learning_rates), prepared.scaling,
                    blocks.total_train_rows, blocks.total_val_rows, blocks.num_partitions)


def range_test(prepared: PreparedData, problem: TrainingProblem, train: TrainConfig,
               settings: RangeTestConfig) -> RangeTestResult:
    """Smith's range test on prepared blocks with the configured model and optimizer.

    Mini-batches of ``train.batch_size`` rows, seeded by ``train.seed``; ``train.schedule`` and
    ``train.algorithm`` do not apply (the rate schedule is the test's own exponential ramp).
    """
    stepper = RangeTestStepper(prepared.blocks, problem, train.batch_size, train.seed)
    rates = range_test_rates(settings.min_lr, settings.max_lr, settings.num_steps)
    return run_range_test(stepper, rates, settings.smoothing, settings.stop_factor)
