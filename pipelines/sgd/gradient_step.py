"""The full-batch gradient step, written once: sums in, one optimizer step out.

Spark MLlib's ``GradientDescent`` splits an iteration into three roles: partitions add gradients and losses
into ``(grad_sum, loss_sum, count)``, the driver adds the partitions' sums in a fixed order, and an updater
moves the weights. Here:

* :meth:`GradientSums.of_block` is a partition's part (:meth:`~pipelines.sgd.kernels.Kernel.gradient_sums`);
* :meth:`GradientSums.total` adds parts in the order given (partition order: reproducible bits);
* :func:`gradient_step` forms ``g = grad_sum / count`` and applies the optimizer with step sizes
  ``learning_rates * multiplier(schedule, t, total_steps)`` at each row's next step ``t``.

The engine's ``gd``, the learning-rate range test and the reference trainer all call these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.kernels import Block, Kernel
from pipelines.sgd.optimizers import OptimizerState, apply_update
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule, multiplier


@dataclass(frozen=True)
class GradientSums:
    """Gradient and loss sums of K models over ``count`` rows (no penalty).

    Attributes
    ----------
    grad_w : ndarray of shape (K, d)
        ``sum_i loss'(m_ik, y_i) * x_i``.
    grad_b : ndarray of shape (K,)
        ``sum_i loss'(m_ik, y_i)``.
    loss : ndarray of shape (K,)
        ``sum_i loss(m_ik, y_i)``.
    count : float
        Rows summed (their weights' sum when rows are weighted).
    """

    grad_w: FloatArray
    grad_b: FloatArray
    loss: FloatArray
    count: float

    @classmethod
    def of_block(cls, kernel: Kernel, block: Block, weights: FloatArray, intercepts: FloatArray) -> GradientSums:
        """The sums over the rows of one block (``X`` of shape ``(n, d)``) at ``weights`` ``(K, d)``."""
        grad_w, grad_b, loss_sum = kernel.gradient_sums(block, weights, intercepts)
        weight = block.sample_weight
        count = int(block.y.shape[0]) if weight is None else float(np.add.reduce(weight))
        return cls(grad_w, grad_b, loss_sum, count)

    @staticmethod
    def total(parts: Sequence[GradientSums]) -> GradientSums:
        """The sum of ``parts`` added one after the other in the given order (a fixed summation order).

        Raises
        ------
        ValueError
            No parts.
        """
        if not parts:
            raise ValueError("GradientSums.total needs at least one part")
        grad_w = parts[0].grad_w.copy()
        grad_b = parts[0].grad_b.copy()
        loss = parts[0].loss.copy()
        for part in parts[1:]:
            grad_w += part.grad_w
            grad_b += part.grad_b
            loss += part.loss
        return GradientSums(grad_w, grad_b, loss, sum(part.count for part in parts))


@dataclass(frozen=True)
class StepResult:
    """Models after one :func:`gradient_step` and the objective at the models it started from."""

    weights: FloatArray  # (K, d)
    intercepts: FloatArray  # (K,)
    objective: FloatArray  # (K,) loss_sum / count + penalty(weights before the step)


def gradient_step(sums: GradientSums, weights: FloatArray, intercepts: FloatArray, state: OptimizerState, *,
                  problem: TrainingProblem, learning_rates: FloatArray, schedule: StepSchedule,
                  total_steps: int, penalties: Penalties | None = None) -> StepResult:
    """One optimizer step of every row from the summed gradients; advances ``state`` in place.

    ``g_k = grad_sum_k / count``; step size ``learning_rates[k] * multiplier(schedule, step_k + 1,
    total_steps)``; :func:`~pipelines.sgd.optimizers.apply_update` with the problem's optimizer and
    regularization. Intercepts do not move when ``problem.fit_intercept`` is False. With ``sgd``,
    ``inv_sqrt`` and no penalty this is MLlib's ``GradientDescent`` iteration.

    Parameters
    ----------
    sums : GradientSums
        At ``weights``/``intercepts``, ``count >= 1``.
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    state : OptimizerState
        Of the K rows; its step counters give ``t``.
    problem : TrainingProblem
    learning_rates : ndarray of shape (K,)
        Base rates (times any per-row multiplier, e.g. the adaptive schedule's).
    schedule : StepSchedule
    total_steps : int
    penalties : Penalties, optional
        Each row's own penalty (a joint grid); default: ``problem.regularization`` on every row.
    """
    count = sums.count
    rows_penalties = penalties if penalties is not None else problem.regularization.rows(weights.shape[0])
    objective: FloatArray = sums.loss / count + rows_penalties.penalty(weights, problem.outputs)
    grad_b = sums.grad_b / count if problem.fit_intercept else np.zeros_like(intercepts)
    step_sizes = learning_rates * np.asarray(multiplier(schedule, state.step + 1, total_steps))
    new_weights, new_intercepts = apply_update(problem.optimizer, state, weights, intercepts, sums.grad_w / count,
                                               grad_b, step_sizes, rows_penalties)
    return StepResult(new_weights, new_intercepts if problem.fit_intercept else intercepts.copy(), objective)
