"""Execution of :mod:`pipelines.sgd` over the whole learning-rate grid at once, on the cached blocks.

The K models of the grid are the rows of one matrix ``W`` of shape ``(K, d)`` (:class:`ModelRows`). One
task function per synchronization runs on the cached blocks (:mod:`pipelines.distributed.blocks`) through an
executor (:mod:`pipelines.distributed.executors`: a Spark job, or a loop in the driver on a small table); each
task handles one partition for all K rows at once and returns one small typed :class:`TaskResult`, so the
driver's memory does not grow with the data (under the Spark executor). What a task trains and how the
driver combines the results is the :class:`~pipelines.distributed.strategies.Strategy` (``local_sgd`` or
``gd``); this module owns the task function, the evaluation and the model rows.

Evaluation is fused into training: the job that trains epoch ``e`` first evaluates the models it starts
from (the result of epoch ``e - 1``) on the partition's training and validation rows, so an epoch costs
one job, plus one final evaluation job. Consequently a policy that stops a row after epoch ``e - 1``
learns it while epoch ``e`` is computed: that one epoch of the row's work is discarded (its models are
rolled back), and from then on the row consumes no compute. (At pruning rungs the sweep loop evaluates in
a job of its own instead, so pruned rates waste nothing.) The training loss of an evaluation is exact (a pass
over the training rows at the evaluated models, or gd's gradient pass) or, with local_sgd's ``train_loss:
progressive``, the progressive sums the training of the evaluated models left in :class:`ModelRows` (no pass:
only the initial models take one); the penalty is the evaluated models' either way.

An epoch is a transaction: :meth:`GridTrainer.run_epoch` replaces the model rows and counters only when
every job of the epoch has succeeded. A job that fails or is cancelled (a signal) leaves the trainer at the
end of the previous epoch, which is what a checkpoint records.

Determinism: tasks depend only on their cached blocks and the closure; partition results are combined in
partition order with elementwise sums (:func:`~pipelines.sgd.averaging.weighted_mean`), and every kernel
computes a model row independently of the others. Same seed, data version and partitioning give identical
curves, a retried task gives identical results, and a row's results are bit-identical whichever other rows
it is trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from pipelines.distributed.blocks import PartitionBlocks
from pipelines.distributed.executors import PartitionExecutor
from pipelines.distributed.strategies import LocalModels, Strategy, TrainedRows, TrainJob, every_row, rows_of
from pipelines.faults import maybe_inject_fault
from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.gradient_step import GradientSums
from pipelines.sgd.kernels import Block
from pipelines.sgd.metrics import MetricAccumulator
from pipelines.sgd.optimizers import OptimizerSpec, OptimizerState, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule


@dataclass
class ModelRows:
    """The K model rows of the grid and their optimizer state.

    A model row is one grid point and seed; it owns ``outputs`` consecutive *weight rows* (the C classes of a
    multinomial model, else one): ``weights``, ``intercepts`` and the optimizer state are per weight row,
    everything else per model row. :meth:`weight_rows` maps the one to the other.
    """

    learning_rates: FloatArray  # (K,) base rates
    seeds: IntArray  # (K,) shuffle seed of each row
    penalties: Penalties  # of the K rows (a joint grid's reg_param/l1_ratio axis)
    weights: FloatArray  # (K * outputs, d)
    intercepts: FloatArray  # (K * outputs,)
    state: OptimizerState  # of the K * outputs weight rows
    rate_multipliers: FloatArray = field(default_factory=lambda: np.ones(0))  # (K,) e.g. 'adaptive'
    outputs: int = 1
    # (K,) each model row's progressive training-loss sum over the epoch that produced its models (all partitions);
    # empty until an epoch has summed it (the initial models: their training loss takes an exact pass)
    epoch_loss_sums: FloatArray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def zeros(cls, learning_rates: Sequence[float], seeds: Sequence[int], penalties: Penalties, n_features: int,
              optimizer: OptimizerSpec, outputs: int = 1) -> ModelRows:
        """Every row at ``w = 0, b = 0`` with fresh optimizer state and multiplier 1."""
        K = len(learning_rates)
        if penalties.n_rows != K:
            raise ValueError(f"{penalties.n_rows} penalties for {K} model rows")
        return cls(np.asarray(learning_rates, dtype=np.float64), np.asarray(seeds, dtype=np.int64), penalties,
                   np.zeros((K * outputs, n_features)), np.zeros(K * outputs),
                   init_state(optimizer, K * outputs, n_features), np.ones(K), outputs)

    def started_at(self, weights: FloatArray, intercepts: FloatArray) -> ModelRows:
        """Every model row at the same start (a warm start): ``weights`` ``(outputs, d)``, ``intercepts``
        ``(outputs,)``; the optimizer state stays fresh."""
        if weights.shape != (self.outputs, self.weights.shape[1]) or intercepts.shape != (self.outputs,):
            raise ValueError(f"a start of shape {weights.shape}, {intercepts.shape} for models of "
                             f"{self.outputs} x {self.weights.shape[1]}")
        return replace(self, weights=np.tile(weights, (self.n_rows, 1)),
                       intercepts=np.tile(intercepts, self.n_rows))

    @property
    def n_rows(self) -> int:
        return int(self.learning_rates.shape[0])

    def weight_rows(self, rows: IntArray) -> IntArray:
        """The weight rows of model ``rows`` (``rows`` itself with one output), model by model."""
        if self.outputs == 1:
            return rows
        expanded: IntArray = (rows[:, np.newaxis] * self.outputs + np.arange(self.outputs)).ravel()
        return expanded

    def step_rates(self, rows: IntArray) -> FloatArray:
        """Base rate times the per-row multiplier, of ``rows``."""
        rates: FloatArray = (self.learning_rates * self.rate_multipliers)[rows]
        return rates

    def updated(self, rows: IntArray, trained: TrainedRows) -> ModelRows:
        """A copy with ``rows`` replaced by ``trained`` (whose arrays are the rows' weight rows); with every row
        replaced, ``trained``'s arrays themselves."""
        weight_rows = self.weight_rows(rows)
        if every_row(weight_rows, self.weights.shape[0]):
            return replace(self, weights=trained.weights, intercepts=trained.intercepts,
                           state=OptimizerState.from_arrays(dict(trained.state.to_arrays())))
        weights, intercepts = self.weights.copy(), self.intercepts.copy()
        weights[weight_rows], intercepts[weight_rows] = trained.weights, trained.intercepts
        slots = {key: value.copy() for key, value in self.state.to_arrays().items()}
        for key, value in trained.state.to_arrays().items():
            slots[key][weight_rows] = value
        return replace(self, weights=weights, intercepts=intercepts, state=OptimizerState.from_arrays(slots))

    def with_epoch_loss(self, rows: IntArray, loss_sums: FloatArray) -> ModelRows:
        """A copy whose ``rows`` have the progressive training-loss sums ``loss_sums`` of the epoch just trained
        (the other rows, stopped, keep theirs: they are not evaluated again)."""
        sums = self.epoch_loss_sums.copy() if self.epoch_loss_sums.size else np.full(self.n_rows, np.nan)
        sums[rows] = loss_sums
        return replace(self, epoch_loss_sums=sums)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat ``{name: array}`` form (checkpoints); keys ``learning_rates``, ..., ``state.<key>``."""
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "learning_rates": self.learning_rates, "seeds": self.seeds, "penalty_l1": self.penalties.l1,
            "penalty_l2": self.penalties.l2, "weights": self.weights,
            "intercepts": self.intercepts, "rate_multipliers": self.rate_multipliers,
            "outputs": np.asarray(self.outputs, dtype=np.int64), "epoch_loss_sums": self.epoch_loss_sums}
        arrays.update({f"state.{key}": value for key, value in self.state.to_arrays().items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> ModelRows:
        """Inverse of :meth:`to_arrays`."""
        state = OptimizerState.from_arrays({key.removeprefix("state."): value for key, value in arrays.items()
                                            if key.startswith("state.")})
        penalties = Penalties(np.asarray(arrays["penalty_l1"], np.float64),
                              np.asarray(arrays["penalty_l2"], np.float64))
        return cls(np.asarray(arrays["learning_rates"], np.float64), np.asarray(arrays["seeds"], np.int64), penalties,
                   np.asarray(arrays["weights"], np.float64), np.asarray(arrays["intercepts"], np.float64), state,
                   np.asarray(arrays["rate_multipliers"], np.float64), int(np.asarray(arrays["outputs"])),
                   np.asarray(arrays.get("epoch_loss_sums", np.zeros(0)), np.float64))


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the models of ``rows`` on the training and validation splits.

    ``train_loss`` is the training objective ``mean loss + penalty`` (the mean loss exact, or progressive: see
    :attr:`~pipelines.distributed.strategies.Strategy.train_loss`); ``validation`` holds the task
    metrics of :meth:`pipelines.sgd.metrics.MetricAccumulator.compute` (``loss`` is the validation loss,
    without penalty). Every array has shape ``(len(rows),)``.
    """

    rows: IntArray
    train_loss: FloatArray
    validation: dict[str, FloatArray]


@dataclass(frozen=True)
class EvaluationPart:
    """A partition's evaluation sums: training loss sums and validation metric sums of the evaluated rows."""

    train_loss_sum: FloatArray | None  # (E,); None: the evaluated models' progressive sums are the training loss
    validation: MetricAccumulator


@dataclass(frozen=True)
class TaskResult:
    """What one task returns for its partition (one per partition and job)."""

    partition: int
    train_rows: int
    training: LocalModels | GradientSums | None
    evaluation: EvaluationPart | None


@dataclass(frozen=True)
class _Task:
    """One job's instructions, captured by the task closure (a few K x d arrays)."""

    strategy: Strategy
    problem: TrainingProblem
    train: TrainJob | None
    eval_rows: IntArray
    eval_weights: FloatArray  # (E * outputs, d): the weight rows of the evaluated model rows
    eval_intercepts: FloatArray  # (E * outputs,)
    fused: bool  # the training payload's loss sums are the evaluation's training loss
    exact_train_loss: bool  # the evaluation sums the training loss (no progressive sums of the evaluated models)


def _run_task(task: _Task, blocks: PartitionBlocks) -> TaskResult:
    """The task function, wherever the executor runs it: train (if asked) and evaluate one partition, with the
    problem's kernel for the partition's blocks."""
    maybe_inject_fault(task.train.epoch if task.train is not None else 0, blocks.partition)
    kernel = task.problem.kernel(blocks.X_train)
    training: LocalModels | GradientSums | None = None
    if task.train is not None and blocks.y_train.shape[0]:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging row is an outcome, not an error
            training = task.strategy.train_partition(task.train, blocks, kernel)
    evaluation = None
    if task.eval_rows.size:
        train_loss_sum = None
        with np.errstate(over="ignore", invalid="ignore"):
            if task.fused and isinstance(training, GradientSums):
                train_loss_sum = training.loss
            elif task.exact_train_loss:
                train_loss_sum = kernel.loss_sums(Block(blocks.X_train, blocks.y_train, blocks.w_train),
                                                  task.eval_weights, task.eval_intercepts)
        evaluation = EvaluationPart(train_loss_sum, MetricAccumulator.from_block(
            blocks.X_val, blocks.y_val, task.eval_weights, task.eval_intercepts, kernel.loss,
            sample_weight=blocks.w_val))
    return TaskResult(blocks.partition, int(blocks.y_train.shape[0]), training, evaluation)


class GridTrainer:
    """Trains the K rows of a grid on cached blocks, one executor call (a Spark job, or a loop in the driver) per
    synchronization.

    The caller (the sweep loop) owns the epoch loop and decides, epoch by epoch, which rows keep
    training; see :meth:`run_epoch`. ``jobs`` and ``row_passes`` count the work done so far (a checkpoint
    saves and restores them with the models).
    """

    def __init__(self, executor: PartitionExecutor, problem: TrainingProblem, strategy: Strategy, models: ModelRows,
                 epochs: int) -> None:
        self.total_train_rows = sum(executor.train_rows)
        if self.total_train_rows == 0:
            raise ValueError("no training rows in the blocks")
        self.executor = executor
        self.problem = problem
        self.strategy = strategy
        self.models = models
        self.epochs = epochs
        self.jobs = 0
        self.row_passes = 0  # model rows x training rows processed by training steps
        self.steps_per_epoch = strategy.steps_per_epoch(executor.train_rows)
        self.total_steps = epochs * self.steps_per_epoch
        self.schedule: StepSchedule = problem.schedule.per_step(self.steps_per_epoch)

    def run_epoch(self, epoch: int, train_rows: Sequence[int] | IntArray,
                  eval_rows: Sequence[int] | IntArray) -> Evaluation:
        """Evaluate the current models of ``eval_rows``, then train ``train_rows`` for epoch ``epoch``.

        Returns the evaluation (of the models as they were before this epoch). ``epoch`` is 1-based. The
        models and counters change only when every job of the epoch succeeded.
        """
        train = np.asarray(sorted(train_rows), dtype=np.int64)
        evaluate = np.asarray(sorted(eval_rows), dtype=np.int64)
        models, jobs, row_passes = self.models, self.jobs, self.row_passes
        evaluation: Evaluation | None = None
        epoch_loss_sums = np.zeros(train.size)  # jobs in order, each the partitions' sums in partition order
        for index, batch_range in enumerate(self.strategy.sync_ranges(self.steps_per_epoch)):
            job = self._train_job(models, epoch, train, batch_range) if train.size else None
            results = self._run(models, job, train, evaluate if index == 0 else np.zeros(0, np.int64))
            jobs += 1
            if index == 0:
                evaluation = self._evaluation(models, evaluate, results)
            if job is not None:
                row_passes += round(self.strategy.row_passes(self.total_train_rows, len(self.executor.train_rows),
                                                             batch_range)) * int(train.size)
                parts = [(r.train_rows, r.training) for r in results if r.train_rows > 0 and r.training is not None]
                trained = self.strategy.combine(job, parts)
                models = models.updated(train, trained)
                if trained.loss_sums is not None:
                    epoch_loss_sums += trained.loss_sums
        if train.size and self.strategy.train_loss == "progressive":
            models = models.with_epoch_loss(train, epoch_loss_sums)
        assert evaluation is not None
        self.models, self.jobs, self.row_passes = models, jobs, row_passes
        return evaluation

    def evaluate(self, eval_rows: Sequence[int] | IntArray) -> Evaluation:
        """Evaluate the current models of ``eval_rows`` (no training)."""
        evaluate = np.asarray(sorted(eval_rows), dtype=np.int64)
        results = self._run(self.models, None, np.zeros(0, np.int64), evaluate)
        evaluation = self._evaluation(self.models, evaluate, results)
        self.jobs += 1
        return evaluation

    def snapshot(self, rows: Sequence[int] | IntArray) -> tuple[FloatArray, FloatArray]:
        """Copies of the current models of ``rows``: weights ``(len(rows), outputs * d)`` (a multinomial model's
        class rows one after the other) and intercepts ``(len(rows), outputs)``."""
        index = np.asarray(rows, dtype=np.int64)
        weight_rows, outputs = self.models.weight_rows(index), self.models.outputs
        return (self.models.weights[weight_rows].reshape(index.size, -1),
                self.models.intercepts[weight_rows].reshape(index.size, outputs))

    def restore(self, rows: Sequence[int] | IntArray, weights: FloatArray, intercepts: FloatArray) -> None:
        """Put back saved models (a row stopped after an epoch whose successor was already computed), as
        :meth:`snapshot` returned them."""
        weight_rows = self.models.weight_rows(np.asarray(rows, dtype=np.int64))
        self.models = replace(self.models, weights=self.models.weights.copy(),
                              intercepts=self.models.intercepts.copy())
        self.models.weights[weight_rows] = weights.reshape(weight_rows.size, -1)
        self.models.intercepts[weight_rows] = intercepts.reshape(-1)

    def copy_rows(self, targets: IntArray, sources: IntArray) -> None:
        """Model rows ``targets`` become copies of rows ``sources`` (aligned): weights, intercepts, optimizer
        state and the progressive training-loss sums (population-based training's exploit, between epochs)."""
        to_rows, from_rows = self.models.weight_rows(targets), self.models.weight_rows(sources)
        weights, intercepts = self.models.weights.copy(), self.models.intercepts.copy()
        weights[to_rows], intercepts[to_rows] = weights[from_rows], intercepts[from_rows]
        slots = {key: value.copy() for key, value in self.models.state.to_arrays().items()}
        for value in slots.values():
            value[to_rows] = value[from_rows]
        sums = self.models.epoch_loss_sums.copy()
        if sums.size:
            sums[targets] = sums[sources]
        self.models = replace(self.models, weights=weights, intercepts=intercepts,
                              state=OptimizerState.from_arrays(slots), epoch_loss_sums=sums)

    def set_hyperparameters(self, rows: IntArray, learning_rates: FloatArray, penalties: Penalties) -> None:
        """Base rates and penalties of model ``rows`` from the next epoch on (population-based training's explore)."""
        rates = self.models.learning_rates.copy()
        rates[rows] = learning_rates
        l1, l2 = self.models.penalties.l1.copy(), self.models.penalties.l2.copy()
        l1[rows], l2[rows] = penalties.l1, penalties.l2
        self.models = replace(self.models, learning_rates=rates, penalties=Penalties(l1, l2))

    def set_rate_multipliers(self, multipliers: FloatArray) -> None:
        """Per-row multipliers of the base rates from the next epoch on (the adaptive schedule)."""
        self.models = replace(self.models, rate_multipliers=np.asarray(multipliers, dtype=np.float64).copy())

    # ------------------------------------------------------------------------------------- internals

    def _progressive_sums(self, models: ModelRows, rows: IntArray) -> FloatArray | None:
        """The progressive training-loss sums of ``rows``, or None where the training loss takes an exact pass."""
        if self.strategy.train_loss != "progressive" or not models.epoch_loss_sums.size:
            return None
        sums: FloatArray = models.epoch_loss_sums[rows]
        return sums

    def _train_job(self, models: ModelRows, epoch: int, train: IntArray,
                   batch_range: tuple[int, int] | None) -> TrainJob:
        """The job of model rows ``train``, as the kernels see it: one entry per weight row."""
        weight_rows, outputs = models.weight_rows(train), models.outputs
        return TrainJob(problem=self.problem, schedule=self.schedule, total_steps=self.total_steps, epoch=epoch,
                        weights=rows_of(models.weights, weight_rows),
                        intercepts=rows_of(models.intercepts, weight_rows), state=models.state.select(weight_rows),
                        step_rates=np.repeat(models.step_rates(train), outputs),
                        seeds=np.repeat(models.seeds[train], outputs),
                        penalties=models.penalties.select(train).repeat(outputs), batch_range=batch_range)

    def _run(self, models: ModelRows, job: TrainJob | None, train: IntArray, evaluate: IntArray) -> list[TaskResult]:
        # gd's gradient pass over every training row gives the training loss of the models it starts from
        fused = job is not None and self.strategy.training_loss_is_exact() and np.array_equal(train, evaluate)
        eval_weight_rows = models.weight_rows(evaluate)
        task = _Task(strategy=self.strategy, problem=self.problem, train=job, eval_rows=evaluate,
                     eval_weights=rows_of(models.weights, eval_weight_rows),
                     eval_intercepts=rows_of(models.intercepts, eval_weight_rows),
                     fused=fused, exact_train_loss=self._progressive_sums(models, evaluate) is None)

        def run(blocks: PartitionBlocks) -> TaskResult:
            return _run_task(task, blocks)

        return self.executor.map(run)

    def _evaluation(self, models: ModelRows, rows: IntArray, results: list[TaskResult]) -> Evaluation:
        if not rows.size:
            return Evaluation(rows, np.zeros(0), {})
        parts = [result.evaluation for result in results if result.evaluation is not None]
        progressive = self._progressive_sums(models, rows)
        loss_total = np.zeros(rows.size) if progressive is None else progressive
        for part in parts:  # partition order: a fixed summation order
            if part.train_loss_sum is not None:
                loss_total += part.train_loss_sum
        penalty = models.penalties.select(rows).repeat(models.outputs).penalty(
            rows_of(models.weights, models.weight_rows(rows)), models.outputs)
        with np.errstate(over="ignore", invalid="ignore"):
            train_loss = loss_total / self.total_train_rows + penalty
        accumulator = parts[0].validation
        for part in parts[1:]:
            accumulator = accumulator.merge(part.validation)
        return Evaluation(rows, train_loss, accumulator.compute())
