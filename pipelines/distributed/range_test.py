"""Smith's learning-rate range test on the cached blocks: one synchronous mini-batch step per executor call (a
Spark job, or a loop in the driver on a small table: :mod:`pipelines.distributed.executors`).

Step ``t`` (0-based) with rate ``rate_t``:

1. every partition ``p`` draws ``m_p = max(1, round(batch_size * n_p / N))`` of its ``n_p`` training rows
   without replacement (``numpy.random.default_rng([seed, t, p])``; ``N = sum_p n_p``), so the global
   mini-batch has about ``batch_size`` rows spread over the partitions in proportion to their size;
2. it returns the :class:`~pipelines.sgd.gradient_step.GradientSums` of the current model on them;
3. the driver adds them in partition order and takes one :func:`~pipelines.sgd.gradient_step.gradient_step`
   at rate ``rate_t`` (constant schedule); the step's objective is the mini-batch loss ``loss_t`` at the
   model the step started from.

This module only supplies the step (:class:`RangeTestStepper`, a callable ``rate -> loss``); the ramp of
rates, smoothing, stopping and the suggestion are the sweep layer's :mod:`pipelines.sweep.range_test`. Like
the grid engine's ``gd``, the result depends on the seed, the data and the partitioning only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.distributed.blocks import PartitionBlocks
from pipelines.distributed.executors import PartitionExecutor
from pipelines.sgd._types import FloatArray
from pipelines.sgd.gradient_step import GradientSums, gradient_step
from pipelines.sgd.kernels import Block
from pipelines.sgd.optimizers import init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.schedules import CONSTANT


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


class RangeTestStepper:
    """The one model of a range test and one distributed step of it per call: ``stepper(rate) -> loss_t``.

    Parameters
    ----------
    executor : PartitionExecutor
        Runs the step's task over the cached blocks.
    problem : TrainingProblem
        The loss, penalty and optimizer (its schedule does not apply: the test's ramp is the schedule).
    batch_size : int
        Rows of the global mini-batch.
    seed : int
        Seeds the mini-batch samples.
    start : (weights, intercepts), optional
        The model's start (a warm start), ``(outputs, d)`` and ``(outputs,)``; zeros by default.
    """

    def __init__(self, executor: PartitionExecutor, problem: TrainingProblem, batch_size: int, seed: int,
                 start: tuple[FloatArray, FloatArray] | None = None) -> None:
        self.executor = executor
        self.problem = problem
        self.seed = seed
        self.batch_rows = partition_batch_rows(executor.train_rows, batch_size)
        outputs = problem.outputs  # one model: its weight rows (a multinomial model's classes)
        self.weights = np.zeros((outputs, executor.n_features)) if start is None else start[0].copy()
        self.intercepts = np.zeros(outputs) if start is None else start[1].copy()
        self.state = init_state(problem.optimizer, outputs, executor.n_features)
        self.steps = 0
        self.jobs = 0

    def __call__(self, rate: float) -> float:
        # the task closure captures plain values only (never `self`, whose executor holds the DataFrame)
        problem, seed, weights, intercepts = self.problem, self.seed, self.weights, self.intercepts
        step, batch_rows = self.steps, self.batch_rows

        def task(blocks: PartitionBlocks) -> GradientSums | None:
            n_rows, wanted = blocks.y_train.shape[0], batch_rows[blocks.partition]
            if wanted == 0 or n_rows == 0:
                return None
            rows = sample_rows(n_rows, wanted, seed, step, blocks.partition)
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging model is an expected outcome here
                block = Block(blocks.X_train[rows], blocks.y_train[rows],
                              None if blocks.w_train is None else blocks.w_train[rows])
                return GradientSums.of_block(problem.kernel(block.X), block, weights, intercepts)

        parts = [part for part in self.executor.map(task) if part is not None]
        self.jobs += 1
        self.steps += 1
        with np.errstate(over="ignore", invalid="ignore"):
            result = gradient_step(GradientSums.total(parts), weights, intercepts, self.state, problem=self.problem,
                                   learning_rates=np.full(self.weights.shape[0], rate), schedule=CONSTANT,
                                   total_steps=1)
        self.weights, self.intercepts = result.weights, result.intercepts
        return float(result.objective[0])
