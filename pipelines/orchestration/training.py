"""Training steps from configuration slices: features -> cached blocks -> the engine under the sweep loop.

Each function receives only what it needs: the :class:`~pipelines.sgd.problem.TrainingProblem` (built when
the configuration was loaded) and the ``train``/``sweep`` sections. Nothing here touches MLflow or writes
tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import DataConfig, FeaturesConfig, RangeTestConfig, SweepConfig, TrainConfig
from pipelines.distributed.blocks import BlockSet, build_blocks, spark_context
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.evaluation import evaluate_rows
from pipelines.distributed.executors import (
    DataSize,
    DriverExecutor,
    ExecutorChoice,
    PartitionExecutor,
    SparkExecutor,
    block_bytes_estimate,
    choose_executor,
    default_driver_limit,
    driver_too_small,
)
from pipelines.distributed.range_test import RangeTestStepper
from pipelines.distributed.strategies import GradientDescent, LocalSGD, Strategy
from pipelines.errors import DataError
from pipelines.features.encoding import TableEncoding
from pipelines.features.fitting import fit_encoding
from pipelines.features.split import SPLIT_COLUMN, TEST, TRAIN, with_split
from pipelines.features.weights import WEIGHT_COLUMN, row_weights
from pipelines.identifiers import column
from pipelines.lakehouse.checks import class_index
from pipelines.lakehouse.reader import FeatureTable
from pipelines.sgd._types import FloatArray
from pipelines.sgd.kernels import small_table_batch_size
from pipelines.sgd.losses import Loss
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.schedules import ScheduleSpec
from pipelines.stopwatch import Stopwatch
from pipelines.sweep.grid import GridPoint, row_penalties
from pipelines.sweep.loop import BoundaryHook, run_grid
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.pbt import PopulationBasedTraining
from pipelines.sweep.policies import (
    AdaptiveRate,
    Divergence,
    EarlyStopping,
    KeepLatest,
    Policies,
    SuccessiveHalving,
)
from pipelines.sweep.range_test import RangeTestResult, range_test_rates, run_range_test
from pipelines.sweep.snapshot import GridSnapshot
from pipelines.sweep.state import grid_state

#: A warm start: every model's weights ``(outputs, d)`` and intercepts ``(outputs,)``.
Start = tuple[FloatArray, FloatArray]


@dataclass(frozen=True)
class PreparedData:
    """Training data ready for the engine: cached encoded blocks, the encoding fitted on the training split and
    the executor chosen for them (:mod:`pipelines.distributed.executors`)."""

    blocks: BlockSet
    encoding: TableEncoding
    executor: PartitionExecutor  # where the engine's tasks run over ``blocks``
    executor_choice: ExecutorChoice  # and why (the job prints it)
    classes: tuple[Any, ...] | None = None  # multinomial: the training split's classes (the model's outputs)
    notes: tuple[str, ...] = ()  # what the job should say about the data (classes unseen in training)

    def problem(self, problem: TrainingProblem) -> TrainingProblem:
        """``problem`` on these data (:func:`problem_for`)."""
        return problem_for(problem, self.classes)


def problem_for(problem: TrainingProblem, classes: tuple[Any, ...] | None) -> TrainingProblem:
    """``problem`` on data with these classes: a multinomial model gets the training split's number of classes."""
    return problem if classes is None else replace(problem, n_classes=len(classes))


def default_parallelism(spark: SparkSession) -> int:
    """Spark's default parallelism (under Spark Connect, which has no SparkContext: ``spark.default.parallelism``,
    else 2)."""
    context = spark_context(spark)
    if context is not None:
        return int(context.defaultParallelism)
    return int(spark.conf.get("spark.default.parallelism", "2") or 2)


def local_master(spark: SparkSession) -> bool:
    """Whether the session is classic with a ``local[...]`` master (False under Spark Connect: the executors are
    wherever its server is, not in this process's host)."""
    context = spark_context(spark)
    return context is not None and str(context.master).startswith("local")


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
                 num_partitions: int | None = None, model_rows: int = 1, steps: Stopwatch | None = None
                 ) -> PreparedData:
    """Split, fit the encoding (and weights) on the training split, pack and cache the blocks (read once), and
    choose where the engine's tasks run (``train.executor``; ``model_rows``: the most grid points x seeds the
    sweep trains at once, which ``auto`` weighs; the driver executor collects the blocks here, once).

    ``steps`` (when given) times ``prepare.split``, ``prepare.fit`` (the passes over the training split; the
    split's own columns are computed lazily, within them) and ``prepare.stage`` (the blocks).

    Test rows are left out of the blocks. ``num_partitions`` (a resumed sweep's recorded partitioning) wins over
    ``train.num_partitions``.

    Raises
    ------
    DataError
        No training rows, or fewer validation rows than ``data.min_validation_rows``; ``train.executor=driver``
        on rows whose blocks would not fit the driver (before any block is built).
    """
    where = _where(table)
    steps = steps or Stopwatch()
    with steps.timed("prepare.split"):
        split = split_table(table, data, train.seed)
        classes: tuple[Any, ...] | None = None
        notes: tuple[str, ...] = ()
        if table.label_is_index:
            classes, notes, split = training_classes(table, split)
    train_rows = split.filter(F.col(SPLIT_COLUMN) == F.lit(TRAIN))
    with steps.timed("prepare.fit"):
        encoding = fit_encoding(train_rows, table.columns.used, table.array_lengths, features, where)
        weight = weight_column(table, train_rows, class_weight)
    modeled = split.filter(F.col(SPLIT_COLUMN) != F.lit(TEST))
    if weight is not None:
        modeled = modeled.withColumn(WEIGHT_COLUMN, weight)
    partitions = num_partitions or train.num_partitions or default_parallelism(spark)
    driver_limit = driver_limit_bytes(spark, train)
    estimate = block_bytes_estimate(table.rows, encoding.dense_width, len(encoding.sparse_columns),
                                    np.dtype(train.dtype).itemsize, weight is not None)
    too_large = driver_too_small(estimate, driver_limit) if train.executor == "driver" else None
    if too_large is not None:
        raise DataError(f"{where}: {table.rows:,} rows x {encoding.n_inputs:,} inputs: {too_large}")
    with steps.timed("prepare.stage"):
        blocks = build_blocks(modeled, table.label, encoding, partitions,
                              weight=WEIGHT_COLUMN if weight is not None else None, dtype=train.dtype)
    if blocks.total_train_rows == 0:
        blocks.release()
        raise DataError(f"{where}: no training rows after the {data.split} split")
    if blocks.total_val_rows < data.min_validation_rows:
        blocks.release()
        raise DataError(
            f"{where}: {table.rows} usable rows give {blocks.total_val_rows} validation rows, fewer than "
            f"data.min_validation_rows={data.min_validation_rows}: too few to judge a model; use a larger table, "
            f"raise data.validation_fraction (now {data.validation_fraction}) or lower data.min_validation_rows")
    size = DataSize(blocks.total_train_rows, model_rows, encoding.n_inputs,
                    block_bytes_estimate(blocks.total_train_rows + blocks.total_val_rows, encoding.dense_width,
                                         len(encoding.sparse_columns), np.dtype(train.dtype).itemsize,
                                         weight is not None), driver_limit, local_master(spark))
    choice = choose_executor(train.executor, size, train.driver_max_cells)
    executor = DriverExecutor.collected(blocks) if choice.name == "driver" else SparkExecutor(blocks)
    return PreparedData(blocks, encoding, executor, choice, classes, notes)


def driver_limit_bytes(spark: SparkSession, train: TrainConfig) -> int:
    """The most bytes of blocks the driver executor may hold: ``train.driver_max_bytes``, else
    :func:`~pipelines.distributed.executors.default_driver_limit` of ``spark.driver.memory`` and
    ``spark.driver.maxResultSize`` (Spark's defaults, 1g each, when unset or unreadable)."""
    if train.driver_max_bytes is not None:
        return train.driver_max_bytes
    return default_driver_limit(_spark_setting(spark, "spark.driver.memory"),
                                _spark_setting(spark, "spark.driver.maxResultSize"))


def _spark_setting(spark: SparkSession, key: str) -> str:
    try:
        return str(spark.conf.get(key, "1g") or "1g")
    except Exception:  # a Connect server may refuse to read it
        return "1g"


def model_rows(sweep: SweepConfig, penalties: int) -> int:
    """The most model rows the sweep trains at once: its grid points (``auto``: ``sweep.auto_num`` rates, made odd
    when it refines) x ``penalties`` x ``sweep.seeds`` (one seed, ``train.seed``, by default)."""
    if sweep.learning_rates != "auto":
        rates = len(sweep.grid())
    else:
        rates = sweep.auto_num + (1 - sweep.auto_num % 2) if sweep.refine else sweep.auto_num
    return rates * penalties * len(sweep.seeds or [0])


def training_classes(table: FeatureTable, split: DataFrame,
                     classes: tuple[Any, ...] | None = None) -> tuple[tuple[Any, ...], tuple[str, ...], DataFrame]:
    """A multinomial model's classes: the table's classes that have training rows, in the table's (sorted)
    order, and the split rows with the label re-indexed into them; validation and test rows of a class without
    training rows are dropped and counted (notes). ``classes``: known already (a resumed sweep's), not counted.

    Raises
    ------
    DataError
        Fewer than 2 classes in the training split.
    """
    assert table.label_classes is not None
    label = column(table.label)
    if classes is None:
        counts = {int(row[0]): int(row[1]) for row in split.filter(F.col(SPLIT_COLUMN) == F.lit(TRAIN))
                  .groupBy(label).count().collect()}
        classes = tuple(value for index, value in enumerate(table.label_classes) if counts.get(index))
    if len(classes) < 2:
        raise DataError(f"{_where(table)}: the training split of label {table.label!r} has "
                        f"{len(classes)} class(es) ({list(classes)}); multinomial needs at least 2")
    if classes == table.label_classes:
        return classes, (), split
    kept = [table.label_classes.index(value) for value in classes]
    missing = [index for index in range(len(table.label_classes)) if index not in kept]
    dropped = split.filter(label.isin([float(index) for index in missing])).groupBy(label, F.col(SPLIT_COLUMN)) \
        .count().collect()
    notes = tuple(f"class {table.label_classes[int(row[0])]!r} of label {table.label!r} has no training rows: its "
                  f"{row[2]} {'validation' if int(row[1]) != TEST else 'test'} rows are left out"
                  for row in sorted(dropped, key=lambda r: (r[0], r[1])))
    remapped = split.withColumn(table.label, class_index(table.label, [float(index) for index in kept]))
    return classes, notes, remapped.where(column(table.label).isNotNull())


@dataclass(frozen=True)
class SplitEvaluator:
    """Models measured on one part of the pinned table's split, bound once to what every measurement shares:
    the table, how it is split (``data``, ``seed``) and weighted (``class_weight``), the loss, and a multinomial
    model's ``classes`` (the rows re-indexed into them, rows of other classes left out as in training)."""

    table: FeatureTable
    data: DataConfig
    seed: int
    class_weight: str | Mapping[str, float] | None
    loss: Loss
    classes: tuple[Any, ...] | None = None

    def metrics(self, part: int, encoding: TableEncoding, weights: FloatArray, intercept: float | FloatArray
                ) -> dict[str, float] | None:
        """A model's metrics on one part of the split (``VALIDATION`` or ``TEST``: the same rows, weighted like
        training, that the sweep's own figures for that part come from), or None when the part is empty.

        The model may be another run's (the champion): ``encoding`` is its own, applied to this table's rows.
        """
        table = self.table
        split = split_table(table, self.data, self.seed)
        if table.label_is_index:
            _, _, split = training_classes(table, split, self.classes)
        weight = weight_column(table, split.filter(F.col(SPLIT_COLUMN) == F.lit(TRAIN)), self.class_weight)
        rows = split.filter(F.col(SPLIT_COLUMN) == F.lit(part))
        if weight is not None:
            rows = rows.withColumn(WEIGHT_COLUMN, weight)
        return evaluate_rows(rows, table.label, encoding, weights, intercept, self.loss,
                             weight=WEIGHT_COLUMN if weight is not None else None)


def _where(table: FeatureTable) -> str:
    return f"table {table.ref.identifier} (version {table.ref.version})"


def batch_size(train: TrainConfig, blocks: BlockSet) -> int:
    """local_sgd's mini-batch size on these blocks: ``train.batch_size``, or a smaller one that gives
    ``train.min_steps_per_epoch`` steps per epoch on a small table (:func:`~pipelines.sgd.kernels.
    small_table_batch_size`)."""
    return small_table_batch_size(blocks.train_rows, train.batch_size, train.min_steps_per_epoch)


def make_strategy(train: TrainConfig, blocks: BlockSet) -> Strategy:
    """The configured algorithm with its own settings."""
    if train.algorithm == "gd":
        return GradientDescent(batch_fraction=train.batch_fraction)
    return LocalSGD(batch_size=batch_size(train, blocks), sync_every=train.sync_every, sync_state=train.sync_state,
                    train_loss=train.train_loss)


def make_policies(sweep: SweepConfig, schedule: ScheduleSpec, n_rates: int, n_rows: int,
                  population: PopulationBasedTraining | None = None) -> Policies:
    """The sweep's policies with fresh state (``population``: ``sweep.strategy: pbt``'s, see :func:`population`)."""
    early, pruning = sweep.early_stopping, sweep.pruning
    return Policies(
        divergence=Divergence(n_rates, sweep.divergence_factor),
        selection=EarlyStopping(n_rates, early.patience, early.min_delta) if early.enabled else KeepLatest(),
        pruning=SuccessiveHalving(pruning.min_epochs, pruning.eta) if pruning.enabled else None,
        adaptive=AdaptiveRate(n_rows, schedule.n_iter_no_change, schedule.tol) if schedule.name == "adaptive"
        else None,
        population=population)


def population(sweep: SweepConfig, points: Sequence[GridPoint], epochs: int, seed: int) -> PopulationBasedTraining:
    """``sweep.pbt``'s rules over the grid's ``points`` (``seed``: ``train.seed`` unless ``sweep.pbt.seed``)."""
    pbt = sweep.pbt
    return PopulationBasedTraining.start(
        [point.learning_rate for point in points], [point.reg_param for point in points], interval=pbt.interval,
        quantile=pbt.quantile, factors=pbt.factors, resample_probability=pbt.resample_probability,
        seed=seed if pbt.seed is None else pbt.seed, epochs=epochs, l1_ratios=[point.l1_ratio for point in points])


def train_grid(prepared: PreparedData, problem: TrainingProblem, train: TrainConfig, sweep: SweepConfig,
               points: Sequence[GridPoint], *, resume: GridSnapshot | None = None,
               on_boundary: BoundaryHook | None = None, start: Start | None = None) -> GridOutcome:
    """Train the grid's ``points`` (every seed of ``sweep.seeds``) on prepared blocks for ``train.epochs``; return
    what each point produced (its curves, status and kept model, in the order of ``points``).

    Each point's model rows get its learning rate and penalty (``problem.regularization`` is the range test's;
    the grid's points carry their own). With ``resume``, training continues from that epoch boundary (same
    bits as never stopping); else every model starts at ``start`` (a warm start; zeros by default).
    """
    blocks, problem = prepared.blocks, prepared.problem(problem)
    seeds = sweep.seeds or [train.seed]
    rows_rates = [point.learning_rate for point in points for _ in seeds]
    rows_seeds = [seed for _ in points for seed in seeds]
    models = ModelRows.zeros(rows_rates, rows_seeds, row_penalties(points, len(seeds)), blocks.n_features,
                             problem.optimizer, problem.outputs)
    if start is not None:
        models = models.started_at(*start)
    trainer = GridTrainer(prepared.executor, problem, make_strategy(train, blocks), models, train.epochs)
    pbt = population(sweep, points, train.epochs, train.seed) if sweep.strategy == "pbt" else None
    state = grid_state(points, seeds, train.epochs, problem.loss, blocks.n_features, problem.outputs,
                       population=pbt is not None)
    policies = make_policies(sweep, problem.schedule, len(points), len(rows_rates), pbt)
    if resume is not None:
        resume.restore(trainer, state, policies)
    return run_grid(trainer, state, policies, on_boundary)


def range_test(prepared: PreparedData, problem: TrainingProblem, train: TrainConfig,
               settings: RangeTestConfig, start: Start | None = None) -> RangeTestResult:
    """Smith's range test on prepared blocks with the configured model and optimizer.

    Mini-batches of ``train.batch_size`` rows, seeded by ``train.seed``; ``train.schedule`` and
    ``train.algorithm`` do not apply (the rate schedule is the test's own exponential ramp).
    """
    stepper = RangeTestStepper(prepared.executor, prepared.problem(problem), train.batch_size, train.seed, start)
    rates = range_test_rates(settings.min_lr, settings.max_lr, settings.num_steps)
    return run_range_test(stepper, rates, settings.smoothing, settings.stop_factor)
