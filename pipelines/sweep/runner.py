"""A sweep from a validated configuration: features -> cached blocks -> the grid trainer -> the loop.

Each function receives only the configuration sections it needs. Nothing here touches MLflow or writes
tables; the job hands the :class:`SweepRun` to ``tracking`` and ``lakehouse``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import (
    Config,
    DataConfig,
    FeaturesConfig,
    ModelConfig,
    OptimizerConfig,
    RangeTestConfig,
    ScheduleConfig,
    SweepConfig,
    TrainConfig,
)
from pipelines.distributed.blocks import BlockSet, build_blocks
from pipelines.distributed.engine import GridTrainer, ModelRows, TrainingProblem
from pipelines.distributed.range_test import RangeTestProblem, distributed_range_test
from pipelines.errors import DataError
from pipelines.features.scaling import FeatureScaling, fit_scaling
from pipelines.features.split import VALIDATION_COLUMN, with_validation_flag
from pipelines.lakehouse.reader import FeatureTable
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import AdaptiveRateState, ScheduleSpec
from pipelines.sweep.loop import GridOutcome, LoopPolicies, run_grid
from pipelines.sweep.policies import EarlyStopping, SuccessiveHalving
from pipelines.sweep.range_test import RangeTestResult, range_test_rates


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
                 train: TrainConfig) -> PreparedData:
    """Split, fit standardization on the training split, pack and cache the blocks (read once)."""
    columns = [table.label, *table.features]
    flagged = with_validation_flag(table.dataframe, columns, data.validation_fraction, train.seed)
    scaling = fit_scaling(flagged.filter(~F.col(VALIDATION_COLUMN)), table.features, features.standardize)
    partitions = train.num_partitions or default_parallelism(spark)
    blocks = build_blocks(flagged, table.label, table.features, scaling, partitions)
    where = f"table {table.ref.identifier} (version {table.ref.version})"
    if blocks.total_train_rows == 0:
        blocks.release()
        raise DataError(f"{where}: no training rows after the validation split")
    if blocks.total_val_rows == 0:
        blocks.release()
        raise DataError(f"{where}: the validation split is empty ({table.rows} rows, data.validation_fraction="
                        f"{data.validation_fraction}); raise data.validation_fraction")
    return PreparedData(blocks, scaling)


def schedule_spec(schedule: ScheduleConfig, steps_per_epoch: int) -> ScheduleSpec:
    """Epoch-based schedule settings -> the step-based :class:`ScheduleSpec`.

    ``exponential``'s ``gamma`` is per epoch (``gamma ** (1 / steps_per_epoch)`` per step);
    ``adaptive`` trains with a constant rate that the loop divides by 5 on plateaus.
    """
    name = "constant" if schedule.name == "adaptive" else schedule.name
    gamma = schedule.gamma ** (1.0 / steps_per_epoch) if name == "exponential" else schedule.gamma
    return ScheduleSpec(
        name=name, power_t=schedule.power_t, step_size=max(1, round(schedule.step_epochs * steps_per_epoch)),
        gamma=gamma, min_factor=schedule.min_factor,
        warmup_steps=round(schedule.warmup_epochs * steps_per_epoch), pct_start=schedule.pct_start,
        div_factor=schedule.div_factor, final_div_factor=schedule.final_div_factor)


def optimizer_spec(optimizer: OptimizerConfig) -> OptimizerSpec:
    return OptimizerSpec(name=optimizer.name, momentum=optimizer.momentum, beta1=optimizer.beta1,
                         beta2=optimizer.beta2, alpha=optimizer.alpha, eps=optimizer.eps)


def training_problem(model: ModelConfig, train: TrainConfig, steps_per_epoch: int) -> TrainingProblem:
    return TrainingProblem(
        loss=model.loss, fit_intercept=model.fit_intercept,
        regularization=Regularization(model.reg_param, model.l1_ratio),
        optimizer=optimizer_spec(train.optimizer), schedule=schedule_spec(train.schedule, steps_per_epoch),
        algorithm=train.algorithm, batch_size=train.batch_size, batch_fraction=train.batch_fraction,
        sync_every=train.sync_every, sync_state=train.optimizer.sync_state)


def steps_per_epoch(blocks: BlockSet, train: TrainConfig) -> int:
    """Optimizer steps per epoch: 1 for gd, batches of the largest partition for local_sgd."""
    if train.algorithm == "gd":
        return 1
    return max(1, -(-max(blocks.train_rows) // train.batch_size))


def loop_policies(sweep: SweepConfig, schedule: ScheduleConfig, n_rates: int, n_rows: int) -> LoopPolicies:
    early = sweep.early_stopping
    pruning = sweep.pruning
    return LoopPolicies(
        divergence_factor=sweep.divergence_factor,
        early_stopping=EarlyStopping(n_rates, early.patience, early.min_delta) if early.enabled else None,
        pruning=SuccessiveHalving(pruning.min_epochs, pruning.eta) if pruning.enabled else None,
        adaptive=AdaptiveRateState.start(n_rows, schedule.n_iter_no_change) if schedule.name == "adaptive"
        else None,
        adaptive_tol=schedule.tol)


def train_grid(prepared: PreparedData, config: Config, learning_rates: Sequence[float],
               progress: Callable[[str], None] | None = None, epochs: int | None = None) -> SweepRun:
    """Train ``learning_rates`` (every seed of ``sweep.seeds``) on prepared blocks."""
    blocks = prepared.blocks
    seeds = config.sweep.seeds or [config.train.seed]
    epochs = epochs or config.train.epochs
    spe = steps_per_epoch(blocks, config.train)
    problem = training_problem(config.model, config.train, spe)
    rows_rates = [rate for rate in learning_rates for _ in seeds]
    rows_seeds = [seed for _ in learning_rates for seed in seeds]
    models = ModelRows.zeros(rows_rates, rows_seeds, blocks.n_features, problem.optimizer)
    trainer = GridTrainer(blocks, problem, models, epochs)
    policies = loop_policies(config.sweep, config.train.schedule, len(learning_rates), len(rows_rates))
    outcome = run_grid(trainer, learning_rates, seeds, epochs, config.model.loss, policies, progress)
    return SweepRun(outcome, tuple(float(r) for r in learning_rates), prepared.scaling,
                    blocks.total_train_rows, blocks.total_val_rows, blocks.num_partitions)


def range_test(prepared: PreparedData, model: ModelConfig, train: TrainConfig,
               settings: RangeTestConfig) -> RangeTestResult:
    """Smith's range test on prepared blocks with the configured model and optimizer.

    Mini-batches of ``train.batch_size`` rows, seeded by ``train.seed``; ``train.schedule`` and
    ``train.algorithm`` do not apply (the rate schedule is the test's own exponential ramp).
    """
    problem = RangeTestProblem(
        loss=model.loss, fit_intercept=model.fit_intercept,
        regularization=Regularization(model.reg_param, model.l1_ratio), optimizer=optimizer_spec(train.optimizer),
        batch_size=train.batch_size, seed=train.seed)
    rates = range_test_rates(settings.min_lr, settings.max_lr, settings.num_steps)
    return distributed_range_test(prepared.blocks, problem, rates, settings.smoothing, settings.stop_factor)
