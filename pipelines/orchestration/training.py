"""Training steps from configuration slices: features -> cached blocks -> the engine under the sweep loop.

Each function receives only what it needs: the :class:`~pipelines.sgd.problem.TrainingProblem` (built when
the configuration was loaded) and the ``train``/``sweep`` sections. Nothing here touches MLflow or writes
tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import DataConfig, FeaturesConfig, RangeTestConfig, SweepConfig, TrainConfig
from pipelines.distributed.blocks import BlockSet, build_blocks
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.evaluation import evaluate_rows
from pipelines.distributed.lr_finder import RangeTestStepper
from pipelines.distributed.strategies import GradientDescent, LocalSGD, Strategy
from pipelines.errors import DataError
from pipelines.features.encoding import TableEncoding
from pipelines.features.fitting import fit_encoding
from pipelines.features.split import SPLIT_COLUMN, TEST, TRAIN, with_split
from pipelines.features.weights import WEIGHT_COLUMN, row_weights
from pipelines.lakehouse.reader import FeatureTable
from pipelines.sgd._types import FloatArray
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
    """Training data ready for the engine: cached encoded blocks and the encoding fitted on the training split."""

    blocks: BlockSet
    encoding: TableEncoding


@dataclass(frozen=True)
class SweepRun:
    """One grid trained on one pinned table."""

    outcome: GridOutcome
    learning_rates: tuple[float, ...]
    encoding: TableEncoding
    train_rows: int
    validation_rows: int
    num_partitions: int


def default_parallelism(spark: SparkSession) -> int:
    """Spark's default parallelism (2 when it cannot be read, e.g. under Spark Connect)."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:
        return int(spark.conf.get("spark.default.parallelism", "2") or 2)


def split_table(table: FeatureTable, data: DataConfig, seed: int) -> DataFrame:
    """The table's rows with their split (:data:`~pipelines.features.split.SPLIT_COLUMN`), by ``data.split``."""
    return with_split(table.dataframe, data.split, [table.label, *table.features], data.validation_fraction,
                      data.test_fraction, seed, label=table.label, time_column=table.time_column,
                      split_column=table.split_column, where=_where(table))


def weight_column(table: FeatureTable, train_rows: DataFrame,
                  class_weight: str | Mapping[str, float] | None) -> Column | None:
    """Each row's normalized weight (None: unweighted); see :mod:`pipelines.features.weights`."""
    return row_weights(train_rows, table.label, table.weight, class_weight, table.label_classes, _where(table))


def prepare_data(spark: SparkSession, table: FeatureTable, data: DataConfig, features: FeaturesConfig,
                 train: TrainConfig, class_weight: str | Mapping[str, float] | None = None,
                 num_partitions: int | None = None) -> PreparedData:
    """Split, fit the encoding (and weights) on the training split, pack and cache the blocks (read once).

    Test rows are left out of the blocks. ``num_partitions`` (a resumed sweep's recorded partitioning) wins over
    ``train.num_partitions``.

    Raises
    ------
    DataError
        No training rows, or fewer validation rows than ``data.min_validation_rows``.
    """
    where = _where(table)
    split = split_table(table, data, train.seed)
    train_rows = split.filter(F.col(SPLIT_COLUMN) == F.lit(TRAIN))
    encoding = fit_encoding(train_rows, table.columns.used, table.array_lengths, features, where)
    weight = weight_column(table, train_rows, class_weight)
    modeled = split.filter(F.col(SPLIT_COLUMN) != F.lit(TEST))
    if weight is not None:
        modeled = modeled.withColumn(WEIGHT_COLUMN, weight)
    partitions = num_partitions or train.num_partitions or default_parallelism(spark)
    blocks = build_blocks(modeled, table.label, encoding, partitions,
                          weight=WEIGHT_COLUMN if weight is not None else None)
    if blocks.total_train_rows == 0:
        blocks.release()
        raise DataError(f"{where}: no training rows after the {data.split} split")
    if blocks.total_val_rows < data.min_validation_rows:
        blocks.release()
        raise DataError(
            f"{where}: {table.rows} usable rows give {blocks.total_val_rows} validation rows, fewer than "
            f"data.min_validation_rows={data.min_validation_rows}: too few to judge a model; use a larger table, "
            f"raise data.validation_fraction (now {data.validation_fraction}) or lower data.min_validation_rows")
    return PreparedData(blocks, encoding)


def held_out_metrics(table: FeatureTable, data: DataConfig, seed: int, class_weight: str | Mapping[str, float] | None,
                 encoding: TableEncoding, weights: FloatArray, intercept: float, loss: str) -> dict[str, float] | None:
    """The model's metrics on the held-out test rows (weighted like training), or None when there are none."""
    split = split_table(table, data, seed)
    weight = weight_column(table, split.filter(F.col(SPLIT_COLUMN) == F.lit(TRAIN)), class_weight)
    test_rows = split.filter(F.col(SPLIT_COLUMN) == F.lit(TEST))
    if weight is not None:
        test_rows = test_rows.withColumn(WEIGHT_COLUMN, weight)
    return evaluate_rows(test_rows, table.label, encoding, weights, intercept, loss,
                         weight=WEIGHT_COLUMN if weight is not None else None)


def _where(table: FeatureTable) -> str:
    return f"table {table.ref.identifier} (version {table.ref.version})"


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
    return SweepRun(outcome, tuple(float(r) for r in learning_rates), prepared.encoding,
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
