"""Smith's learning-rate range test on Spark: one synchronous mini-batch step per Spark job.

Step ``t`` (0-based) with rate ``rate_t``:

1. every partition ``p`` draws ``m_p = max(1, round(batch_size * n_p / N))`` of its ``n_p`` training rows
   without replacement (``numpy.random.default_rng([seed, t, p])``; ``N = sum_p n_p``), so the global
   mini-batch has about ``batch_size`` rows spread over the partitions in proportion to their size;
2. it returns the gradient and loss *sums* of the current model on them
   (:func:`~pipelines.sgd.kernels.batch_gradients`);
3. the driver forms ``g = grad_sum / count`` and ``loss_t = loss_sum / count + penalty(w)`` (the mini-batch
   objective at the model the step starts from), then applies the configured optimizer with step size
   ``rate_t`` (:func:`~pipelines.sgd.optimizers.apply_update`).

The schedule of rates, smoothing, stopping and the suggestion are the pure
:mod:`pipelines.sweep.range_test`; this module only supplies the ``step`` function. Like the grid
engine's ``gd``, the result depends on the seed, the data and the partitioning only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.distributed.blocks import BlockSet, PartitionBlocks, map_partitions
from pipelines.sgd._types import FloatArray
from pipelines.sgd.kernels import batch_gradients
from pipelines.sgd.optimizers import OptimizerSpec, apply_update, init_state
from pipelines.sgd.regularization import Regularization
from pipelines.sweep.range_test import RangeTestResult, run_range_test


@dataclass(frozen=True)
class RangeTestProblem:
    """The model and sampling of a range test; shipped to the executors."""

    loss: str
    fit_intercept: bool
    regularization: Regularization
    optimizer: OptimizerSpec
    batch_size: int
    seed: int


def partition_batch_rows(train_rows: Sequence[int], batch_size: int) -> tuple[int, ...]:
    """Rows each partition samples per step: ``min(n_p, max(1, round(batch_size * n_p / N)))`` (0 if empty)."""
    total = sum(train_rows)
    if total == 0:
        raise ValueError("no training rows in the blocks")
    return tuple(min(n, max(1, round(batch_size * n / total))) if n else 0 for n in train_rows)


def sample_rows(n_rows: int, batch_rows: int, seed: int, step: int, partition: int) -> np.ndarray:
    """Sorted indices of ``batch_rows`` of ``n_rows`` rows without replacement, seeded by (seed, step, partition)."""
    chosen = np.random.default_rng([seed, step, partition]).choice(n_rows, size=batch_rows, replace=False)
    return np.sort(chosen)


def minibatch_sums(problem: RangeTestProblem, weights: FloatArray, intercepts: FloatArray, step: int,
                   batch_rows: int, blocks: PartitionBlocks) -> dict[str, object]:
    """In a task: gradient and loss sums of the one model on the partition's sampled rows."""
    n_rows = blocks.y_train.shape[0]
    if batch_rows == 0 or n_rows == 0:
        return {"count": 0}
    rows = sample_rows(n_rows, batch_rows, problem.seed, step, blocks.partition)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging model is an expected outcome here
        grad_w, grad_b, loss_sum = batch_gradients(blocks.X_train[rows], blocks.y_train[rows], weights,
                                                   intercepts, problem.loss)
    return {"count": int(rows.size), "grad_w": grad_w, "grad_b": grad_b, "loss_sum": loss_sum}


class RangeTestStepper:
    """The model of a range test and one distributed step of it per call: ``stepper(rate) -> loss_t``."""

    def __init__(self, blocks: BlockSet, problem: RangeTestProblem) -> None:
        self.blocks = blocks
        self.problem = problem
        self.batch_rows = partition_batch_rows(blocks.train_rows, problem.batch_size)
        self.weights = np.zeros((1, blocks.n_features))
        self.intercepts = np.zeros(1)
        self.state = init_state(problem.optimizer, 1, blocks.n_features)
        self.steps = 0
        self.jobs = 0

    def __call__(self, rate: float) -> float:
        # the task closure captures plain values only (never `self`, which holds the DataFrame)
        problem, weights, intercepts = self.problem, self.weights, self.intercepts
        step, batch_rows = self.steps, self.batch_rows

        def task(blocks: PartitionBlocks) -> dict[str, object]:
            return minibatch_sums(problem, weights, intercepts, step, batch_rows[blocks.partition], blocks)

        results = map_partitions(self.blocks, task)
        self.jobs += 1
        self.steps += 1
        count = sum(int(r["count"]) for r in results)  # type: ignore[call-overload]
        grad_w = np.zeros_like(weights)
        grad_b = np.zeros(1)
        loss_sum = np.zeros(1)
        for result in results:  # partition order: a fixed summation order
            if int(result["count"]):  # type: ignore[call-overload]
                grad_w += np.asarray(result["grad_w"])
                grad_b += np.asarray(result["grad_b"])
                loss_sum += np.asarray(result["loss_sum"])
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging model is an expected outcome here
            loss = float(loss_sum[0] / count + problem.regularization.penalty(weights)[0])
            new_weights, new_intercepts = apply_update(
                problem.optimizer, self.state, weights, intercepts, grad_w / count,
                grad_b / count if problem.fit_intercept else np.zeros(1), np.array([rate]), problem.regularization)
        self.weights = new_weights
        self.intercepts = new_intercepts if problem.fit_intercept else intercepts
        return loss


def distributed_range_test(blocks: BlockSet, problem: RangeTestProblem, learning_rates: Sequence[float] | FloatArray,
                           smoothing: float, stop_factor: float) -> RangeTestResult:
    """Run the range test over ``learning_rates`` on cached blocks; one Spark job per step."""
    return run_range_test(RangeTestStepper(blocks, problem), learning_rates, smoothing, stop_factor)
