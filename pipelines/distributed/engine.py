"""Spark execution of :mod:`pipelines.sgd` over the whole learning-rate grid at once.

The K models of the grid are the rows of one matrix ``W`` of shape ``(K, d)``. One Spark job per
synchronization runs on the cached blocks (:mod:`pipelines.distributed.blocks`); each task handles one
partition for all K rows at once and returns a single small payload (models, sums), so the driver's
memory does not grow with the data.

Two algorithms:

``local_sgd``
    Each partition runs shuffled mini-batch SGD over its training rows (:func:`~pipelines.sgd.kernels.
    minibatch_epoch`) from the current models; the driver averages the resulting models, weighted by the
    partitions' training row counts (``W <- sum_p n_p W_p / sum_p n_p``), after every epoch or every
    ``sync_every`` local steps. Optimizer state (momentum, Adam moments) is averaged the same way
    (``sync_state: average``) or zeroed (``reset``); the step counter keeps counting either way, so
    schedules continue.
``gd``
    Synchronous gradient descent, one step per job: every partition returns the gradient and loss sums
    at the current ``W`` (optionally over a Bernoulli sample of ``batch_fraction`` of its rows), the
    driver forms ``g = grad_sum / count`` and applies the optimizer with step size
    ``rate * schedule(t)``. With ``sgd``, ``inv_sqrt`` and no regularization this is Spark MLlib's
    ``GradientDescent`` step for step.

Evaluation is fused into training: the job that trains epoch ``e`` first evaluates the models it starts
from (the result of epoch ``e - 1``) on the partition's training and validation rows, so an epoch costs
one job, plus one final evaluation job. Consequently a policy that stops a row after epoch ``e - 1``
learns it while epoch ``e`` is computed: that one epoch of the row's work is discarded (its models are
rolled back), and from then on the row consumes no compute. (At pruning rungs the sweep loop evaluates in
a job of its own instead, so pruned rates waste nothing.)

Determinism: tasks depend only on their cached blocks and the broadcast closure; partition results are
combined in partition order with elementwise sums (:func:`~pipelines.sgd.averaging.weighted_mean`), and
every kernel computes a model row independently of the others. Same seed, data version and partitioning
give identical curves, a retried task gives identical results, and a row's results are bit-identical
whichever other rows it is trained with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from pipelines.distributed.blocks import BlockSet, PartitionBlocks, map_partitions
from pipelines.distributed.faults import maybe_inject_fault
from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.averaging import weighted_mean
from pipelines.sgd.kernels import batch_gradients, loss_sums, minibatch_epoch
from pipelines.sgd.metrics import MetricAccumulator
from pipelines.sgd.optimizers import OptimizerSpec, OptimizerState, apply_update, init_state
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec, multiplier

#: Offset between the shuffle seeds of consecutive partitions (partition 0 uses the seed itself, so a
#: one-partition run equals the single-process reference).
PARTITION_SEED_STRIDE = 7919


@dataclass(frozen=True)
class TrainingProblem:
    """Everything a task needs besides the data and the current models; shipped to the executors."""

    loss: str
    fit_intercept: bool
    regularization: Regularization
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    algorithm: str = "local_sgd"  # "local_sgd" | "gd"
    batch_size: int = 256
    batch_fraction: float = 1.0
    sync_every: int | None = None
    sync_state: str = "average"  # "average" | "reset"


@dataclass
class ModelRows:
    """The K model rows of the grid and their optimizer state."""

    learning_rates: FloatArray  # (K,) base rates
    seeds: IntArray  # (K,) shuffle seed of each row
    weights: FloatArray  # (K, d)
    intercepts: FloatArray  # (K,)
    state: OptimizerState
    rate_multipliers: FloatArray = field(default_factory=lambda: np.ones(0))  # (K,) e.g. 'adaptive'

    @classmethod
    def zeros(cls, learning_rates: Sequence[float], seeds: Sequence[int], n_features: int,
              optimizer: OptimizerSpec) -> ModelRows:
        K = len(learning_rates)
        return cls(np.asarray(learning_rates, dtype=np.float64), np.asarray(seeds, dtype=np.int64),
                   np.zeros((K, n_features)), np.zeros(K), init_state(optimizer, K, n_features), np.ones(K))

    @property
    def n_rows(self) -> int:
        return int(self.learning_rates.shape[0])


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the models of ``rows`` on the training and validation splits.

    ``train_loss`` is the training objective ``mean loss + penalty``; ``validation`` holds the task
    metrics of :meth:`pipelines.sgd.metrics.MetricAccumulator.compute` (``loss`` is the validation loss,
    without penalty). Every array has shape ``(len(rows),)``.
    """

    rows: IntArray
    train_loss: FloatArray
    validation: dict[str, FloatArray]


@dataclass(frozen=True)
class _TaskSpec:
    """One job's instructions, captured by the task closure (a few K x d arrays)."""

    problem: TrainingProblem
    n_features: int
    eval_rows: IntArray  # positions in `weights` to evaluate
    train_rows: IntArray  # positions in `weights` to advance
    weights: FloatArray
    intercepts: FloatArray
    state_arrays: dict[str, npt.NDArray[np.generic]]  # of the train rows
    step_rates: FloatArray  # (len(train_rows),) base rate x multiplier
    seeds: IntArray  # (len(train_rows),)
    epoch: int
    total_steps: int
    batch_range: tuple[int, int] | None


def _run_task(spec: _TaskSpec, blocks: PartitionBlocks) -> dict[str, object]:
    """Executed on the executors: evaluate and train one partition, return one payload."""
    maybe_inject_fault(spec.epoch, blocks.partition)
    problem = spec.problem
    payload: dict[str, object] = {"n_train": blocks.y_train.shape[0], "n_val": blocks.y_val.shape[0]}
    fused = problem.algorithm == "gd" and problem.batch_fraction >= 1.0 and np.array_equal(
        spec.eval_rows, spec.train_rows)  # gd's gradient pass yields the training loss at the same models
    if spec.train_rows.size and blocks.y_train.shape[0]:
        W, b = spec.weights[spec.train_rows], spec.intercepts[spec.train_rows]
        if problem.algorithm == "gd":
            X, y = _sample(blocks.X_train, blocks.y_train, problem.batch_fraction, int(spec.seeds[0]),
                           spec.epoch, blocks.partition)
            grad_w, grad_b, loss_sum = batch_gradients(X, y, W, b, problem.loss)
            payload.update(grad_w=grad_w, grad_b=grad_b, count=y.shape[0])
            if fused:
                payload["train_loss_sum"] = loss_sum
        else:
            payload.update(_local_sgd(spec, blocks.X_train, blocks.y_train, W, b, blocks.partition))
    if spec.eval_rows.size:
        W, b = spec.weights[spec.eval_rows], spec.intercepts[spec.eval_rows]
        if "train_loss_sum" not in payload:
            payload["train_loss_sum"] = loss_sums(blocks.X_train, blocks.y_train, W, b, problem.loss)
        payload["validation"] = MetricAccumulator.from_block(
            blocks.X_val, blocks.y_val, W, b, problem.loss).to_arrays()
    return payload


def _local_sgd(spec: _TaskSpec, X: FloatArray, y: FloatArray, W: FloatArray, b: FloatArray,
               partition: int) -> dict[str, object]:
    """Mini-batch SGD over the partition; rows with different seeds get their own row order."""
    problem = spec.problem
    state = OptimizerState.from_arrays(spec.state_arrays)
    new_W, new_b = W.copy(), b.copy()
    slots: dict[str, npt.NDArray[np.generic]] = {k: v.copy() for k, v in spec.state_arrays.items()}
    steps = 0
    for seed in np.unique(spec.seeds):
        group = np.flatnonzero(spec.seeds == seed)
        W_g, b_g, state_g, steps = minibatch_epoch(
            X, y, W[group], b[group], state.select(group), loss=problem.loss, optimizer=problem.optimizer,
            regularization=problem.regularization, learning_rates=spec.step_rates[group],
            schedule=problem.schedule, total_steps=spec.total_steps, batch_size=problem.batch_size,
            seed=int(seed) + PARTITION_SEED_STRIDE * partition, epoch=spec.epoch - 1,
            fit_intercept=problem.fit_intercept, batch_range=spec.batch_range)
        new_W[group], new_b[group] = W_g, b_g
        for key, value in state_g.to_arrays().items():
            slots[key][group] = value
    return {"weights": new_W, "intercepts": new_b, "state": slots, "steps": steps}


def _sample(X: FloatArray, y: FloatArray, fraction: float, seed: int, step: int,
            partition: int) -> tuple[FloatArray, FloatArray]:
    """A Bernoulli(``fraction``) sample of the rows, seeded by (seed, step, partition)."""
    if fraction >= 1.0:
        return X, y
    keep = np.random.default_rng([seed, step, partition]).random(y.shape[0]) < fraction
    return X[keep], y[keep]


class GridTrainer:
    """Trains the K rows of a grid on cached blocks, one Spark job per synchronization.

    The caller (the sweep loop) owns the epoch loop and decides, epoch by epoch, which rows keep
    training; see :meth:`run_epoch`.
    """

    def __init__(self, blocks: BlockSet, problem: TrainingProblem, models: ModelRows, epochs: int) -> None:
        if problem.algorithm not in ("local_sgd", "gd"):
            raise ValueError(f"algorithm must be 'local_sgd' or 'gd', got {problem.algorithm!r}")
        if blocks.total_train_rows == 0:
            raise ValueError("no training rows in the blocks")
        self.blocks = blocks
        self.problem = problem
        self.models = models
        self.epochs = epochs
        self.jobs = 0
        self.row_passes = 0  # model rows x training rows processed by training steps
        largest = max(blocks.train_rows)
        self.batches_per_epoch = math.ceil(largest / problem.batch_size)
        if problem.algorithm == "gd":
            self.total_steps = epochs
        else:
            self.total_steps = epochs * self.batches_per_epoch

    def steps_per_epoch(self) -> int:
        """Optimizer steps a row takes per epoch (the largest partition's, for local_sgd)."""
        return 1 if self.problem.algorithm == "gd" else self.batches_per_epoch

    def run_epoch(self, epoch: int, train_rows: Sequence[int] | IntArray,
                  eval_rows: Sequence[int] | IntArray) -> Evaluation:
        """Evaluate the current models of ``eval_rows``, then train ``train_rows`` for epoch ``epoch``.

        Returns the evaluation (of the models as they were before this epoch). ``epoch`` is 1-based.
        """
        train = np.asarray(sorted(train_rows), dtype=np.int64)
        evaluate = np.asarray(sorted(eval_rows), dtype=np.int64)
        ranges: list[tuple[int, int] | None] = [None]
        sync = self.problem.sync_every
        if self.problem.algorithm == "local_sgd" and sync and sync < self.batches_per_epoch:
            ranges = [(start, start + sync) for start in range(0, self.batches_per_epoch, sync)]
        evaluation = None
        for index, batch_range in enumerate(ranges):
            results = self._job(epoch, train, evaluate if index == 0 else np.zeros(0, np.int64), batch_range)
            if index == 0:
                evaluation = self._evaluation(evaluate, results)
            if train.size:
                self._apply(epoch, train, results)
        assert evaluation is not None
        return evaluation

    def evaluate(self, eval_rows: Sequence[int] | IntArray) -> Evaluation:
        """Evaluate the current models of ``eval_rows`` (no training)."""
        evaluate = np.asarray(sorted(eval_rows), dtype=np.int64)
        return self._evaluation(evaluate, self._job(0, np.zeros(0, np.int64), evaluate, None))

    # ------------------------------------------------------------------------------------- internals

    def _job(self, epoch: int, train: IntArray, evaluate: IntArray,
             batch_range: tuple[int, int] | None) -> list[dict[str, object]]:
        models = self.models
        spec = _TaskSpec(
            problem=self.problem, n_features=self.blocks.n_features, eval_rows=evaluate, train_rows=train,
            weights=models.weights, intercepts=models.intercepts,
            state_arrays=models.state.select(train).to_arrays() if train.size else {},
            step_rates=(models.learning_rates * models.rate_multipliers)[train],
            seeds=models.seeds[train], epoch=epoch, total_steps=self.total_steps, batch_range=batch_range)

        def task(blocks: PartitionBlocks) -> dict[str, object]:
            return _run_task(spec, blocks)

        results = map_partitions(self.blocks, task)
        self.jobs += 1
        if train.size:
            if self.problem.algorithm == "gd" and self.problem.batch_fraction < 1.0:
                passes = self.problem.batch_fraction * self.blocks.total_train_rows
            elif batch_range is not None:
                passes = min(self.blocks.total_train_rows,
                             (batch_range[1] - batch_range[0]) * self.problem.batch_size * self.blocks.num_partitions)
            else:
                passes = self.blocks.total_train_rows
            self.row_passes += round(passes) * int(train.size)
        return results

    def _evaluation(self, rows: IntArray, results: list[dict[str, object]]) -> Evaluation:
        if not rows.size:
            return Evaluation(rows, np.zeros(0), {})
        loss_total = np.zeros(rows.size)
        for result in results:  # partition order: a fixed summation order
            loss_total += np.asarray(result["train_loss_sum"])
        penalty = self.problem.regularization.penalty(self.models.weights[rows])
        train_loss = loss_total / self.blocks.total_train_rows + penalty
        accumulator = MetricAccumulator.from_arrays(self.problem.loss, results[0]["validation"])  # type: ignore[arg-type]
        for result in results[1:]:
            accumulator = accumulator.merge(
                MetricAccumulator.from_arrays(self.problem.loss, result["validation"]))  # type: ignore[arg-type]
        return Evaluation(rows, train_loss, accumulator.compute())

    def _apply(self, epoch: int, train: IntArray, results: list[dict[str, object]]) -> None:
        models = self.models
        trained = [r for r in results if int(r["n_train"]) > 0]  # type: ignore[call-overload]
        if self.problem.algorithm == "gd":
            count = sum(int(r["count"]) for r in trained)  # type: ignore[call-overload]
            if count == 0:
                return
            grad_w = np.zeros((train.size, self.blocks.n_features))
            grad_b = np.zeros(train.size)
            for result in trained:
                grad_w += np.asarray(result["grad_w"])
                grad_b += np.asarray(result["grad_b"])
            grad_w /= count
            grad_b = grad_b / count if self.problem.fit_intercept else np.zeros(train.size)
            state = models.state.select(train)
            rates = (models.learning_rates * models.rate_multipliers)[train]
            step_sizes = rates * np.asarray(multiplier(self.problem.schedule, state.step + 1, self.total_steps))
            new_W, new_b = apply_update(self.problem.optimizer, state, models.weights[train],
                                        models.intercepts[train], grad_w, grad_b, step_sizes,
                                        self.problem.regularization)
            if not self.problem.fit_intercept:
                new_b = models.intercepts[train]
            self._store(train, new_W, new_b, state)
            return
        counts = [float(r["n_train"]) for r in trained]  # type: ignore[arg-type]
        new_W = weighted_mean([np.asarray(r["weights"]) for r in trained], counts)
        new_b = weighted_mean([np.asarray(r["intercepts"]) for r in trained], counts)
        slot_arrays: dict[str, npt.NDArray[np.generic]] = {}
        for key in trained[0]["state"]:  # type: ignore[attr-defined]
            arrays = [np.asarray(r["state"][key]) for r in trained]  # type: ignore[index]
            if key == "step":
                slot_arrays[key] = np.max(np.stack(arrays), axis=0)
            elif self.problem.sync_state == "reset":
                slot_arrays[key] = np.zeros_like(arrays[0], dtype=np.float64)
            else:
                slot_arrays[key] = weighted_mean(arrays, counts)
        self._store(train, new_W, new_b, OptimizerState.from_arrays(slot_arrays))

    def _store(self, rows: IntArray, weights: FloatArray, intercepts: FloatArray, state: OptimizerState) -> None:
        models = self.models
        models.weights = models.weights.copy()
        models.intercepts = models.intercepts.copy()
        models.weights[rows] = weights
        models.intercepts[rows] = intercepts
        full = models.state.to_arrays()
        for key, value in state.to_arrays().items():
            full[key] = full[key].copy()
            full[key][rows] = value
        models.state = OptimizerState.from_arrays(full)

    def snapshot(self, rows: Sequence[int] | IntArray) -> tuple[FloatArray, FloatArray]:
        """Copies of the current weights and intercepts of ``rows``."""
        index = np.asarray(rows, dtype=np.int64)
        return self.models.weights[index].copy(), self.models.intercepts[index].copy()

    def restore(self, rows: Sequence[int] | IntArray, weights: FloatArray, intercepts: FloatArray) -> None:
        """Put back saved models (a row stopped after an epoch whose successor was already computed)."""
        index = np.asarray(rows, dtype=np.int64)
        self.models = replace(self.models, weights=self.models.weights.copy(),
                              intercepts=self.models.intercepts.copy())
        self.models.weights[index] = weights
        self.models.intercepts[index] = intercepts
