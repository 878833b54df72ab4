"""The numpy kernels: any loss (:class:`NumpyKernel`) and split designs with sparse inputs (:class:`SparseKernel`),
the definition the compiled epochs (:mod:`pipelines.sgd.fused`, :mod:`pipelines.sgd.fused_sparse`,
:mod:`pipelines.sgd.fused_multinomial`) are tested against; they train multinomial models on split designs, and
their full passes (``loss_sums``, ``gradient_sums``) serve the compiled sparse and multinomial kernels.

They run the losses' vectorized definitions (:meth:`~pipelines.sgd.losses.Loss.value`,
:meth:`~pipelines.sgd.losses.Loss.derivative`) and the optimizers' update rules on arrays
(:func:`~pipelines.sgd.optimizers.update_rows`), batch by batch, for all K model rows at once, each with its own
products (:func:`~pipelines.sgd.kernels.compute_margins`), so a row's bits never depend on the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.design import Design, SplitDesign, sparse_gradient, take_rows
from pipelines.sgd.kernels import Block, EpochPlan, EpochSteps, Models, compute_margins, rowwise_gradient
from pipelines.sgd.losses import Loss
from pipelines.sgd.optimizers import SLOT_NAMES, OptimizerSpec, sgd_rule, stacked_slots, update_rows


def _weighted(per_row: FloatArray, sample_weight: FloatArray | None) -> FloatArray:
    """``per_row`` ``(n, K)`` times each row's weight; unchanged (the same array) without weights."""
    if sample_weight is None:
        return per_row
    result: FloatArray = per_row * sample_weight[:, np.newaxis]
    return result


def _row_sums(per_row: FloatArray) -> FloatArray:
    """``per_row`` ``(n, K)`` summed over its rows, each model's terms laid out contiguously first: the same sum
    (numpy's pairwise one) whatever K and whatever the layout of ``per_row``."""
    sums: FloatArray = np.add.reduce(np.ascontiguousarray(per_row.T), axis=1)
    return sums


@dataclass(frozen=True)
class NumpyKernel:
    """The :class:`~pipelines.sgd.kernels.Kernel` of numpy arrays: any loss (multinomial models), any design."""

    loss: Loss
    optimizer: OptimizerSpec

    def loss_sums(self, block: Block, weights: FloatArray, intercepts: FloatArray) -> FloatArray:
        """``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row, shape ``(K,)``."""
        values = self.loss.value(compute_margins(block.X, weights, intercepts), block.y)
        result: FloatArray = _weighted(values, block.sample_weight).sum(axis=0)
        return result

    def gradient_sums(self, block: Block, weights: FloatArray,
                      intercepts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """:meth:`pipelines.sgd.kernels.Kernel.gradient_sums`: the block's margins ``(n, K)``, then the products
        of their derivatives with the inputs."""
        margins = compute_margins(block.X, weights, intercepts)
        derivatives = _weighted(self.loss.derivative(margins, block.y), block.sample_weight)
        grad_b_sum: FloatArray = np.add.reduce(derivatives, axis=0)
        loss_sum: FloatArray = _weighted(self.loss.value(margins, block.y), block.sample_weight).sum(axis=0)
        return rowwise_gradient(derivatives, block.X), grad_b_sum, loss_sum

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        """Batch after batch: the batch's margins and derivatives, the mean gradient
        ``(1/B) sum_i s_i loss'(m_ik, y_i) [x_i, 1]``, then :meth:`_step`; with ``plan.progressive_loss``, the
        batch's losses at the same margins summed (row after row) and added to each model's total."""
        state = models.state
        names = SLOT_NAMES[self.optimizer.name]
        weights, intercepts = models.weights, models.intercepts
        weight_slots = stacked_slots(state.weight_slots, names, weights.shape)
        intercept_slots = stacked_slots(state.intercept_slots, names, intercepts.shape)
        zero_intercepts = np.zeros(intercepts.shape[0])
        loss_sums = np.zeros(intercepts.shape[0] // self.loss.outputs)
        for batch_index in range(steps.n_batches):
            # Gathering each batch with np.take measured faster than one X[order] per epoch.
            start = (steps.first_batch + batch_index) * plan.batch_size
            batch_rows = steps.order[start : start + plan.batch_size]
            X_batch = take_rows(block.X, batch_rows)
            margins, y_batch = compute_margins(X_batch, weights, intercepts), np.take(block.y, batch_rows)
            derivatives = self.loss.derivative(margins, y_batch)
            row_weights = None if block.sample_weight is None else np.take(block.sample_weight, batch_rows)
            if row_weights is not None:
                derivatives = derivatives * row_weights[:, np.newaxis]
            if plan.progressive_loss:
                loss_sums += _row_sums(_weighted(self.loss.value(margins, y_batch), row_weights))
            inverse_batch_rows = 1.0 / batch_rows.shape[0]
            # Column sums accumulate row after row: each model's sum is independent of K.
            grad_b = np.add.reduce(derivatives, axis=0) * inverse_batch_rows if plan.fit_intercept else \
                zero_intercepts
            state.step = state.step + 1
            step_sizes = steps.step_sizes[batch_index]
            new_weights, new_intercepts = self._step(X_batch, derivatives, inverse_batch_rows, grad_b, weights,
                                                     intercepts, (weight_slots, intercept_slots), state.step,
                                                     step_sizes, plan)
            weights = new_weights
            if plan.fit_intercept:
                intercepts = new_intercepts
        for index, name in enumerate(names):
            state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
        return Models(weights.copy(), intercepts.copy(), state, loss_sums if plan.progressive_loss else None)

    def _step(self, X: Design, derivatives: FloatArray, inverse_rows: float, grad_b: FloatArray,
              weights: FloatArray, intercepts: FloatArray, slots: tuple[FloatArray, FloatArray],
              steps: IntArray, step_sizes: FloatArray, plan: EpochPlan) -> tuple[FloatArray, FloatArray]:
        """One optimizer step of every row from the batch's derivatives ``(B, K)`` (slots ``(S, K, d)`` and
        ``(S, K)`` updated in place; ``steps``: this step's counts)."""
        grad_w = rowwise_gradient(derivatives, X) * inverse_rows
        return update_rows(self.optimizer, *slots, steps.astype(np.float64), weights, intercepts, grad_w, grad_b,
                           step_sizes, plan.penalties)


@dataclass(frozen=True)
class SparseKernel(NumpyKernel):
    """The numpy kernel of a split design: plain SGD without a penalty leaves the weights of inputs absent from a
    batch untouched (their gradient is 0), so such a step updates the dense inputs and the batch's touched sparse
    inputs only; a step costs in the batch's non-zeros rather than the width, with the same bits as the full
    update."""

    def _sparse_steps(self, plan: EpochPlan) -> bool:
        return self.optimizer.rule is sgd_rule and plan.penalties.is_zero

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        if self._sparse_steps(plan):  # the sparse steps update the caller's weights in place: a copy
            models = Models(models.weights.copy(), models.intercepts, models.state)
        return super().run_batches(block, models, plan, steps)

    def _step(self, X: Design, derivatives: FloatArray, inverse_rows: float, grad_b: FloatArray,
              weights: FloatArray, intercepts: FloatArray, slots: tuple[FloatArray, FloatArray],
              steps: IntArray, step_sizes: FloatArray, plan: EpochPlan) -> tuple[FloatArray, FloatArray]:
        """``w <- w - step * g`` on the dense inputs and the batch's touched sparse inputs only (in place on
        ``weights``, the caller's copy); the same arithmetic, element by element, as the sgd rule on every column,
        whose other columns would be ``w - step * 0 = w``."""
        if not (self._sparse_steps(plan) and isinstance(X, SplitDesign)):
            return super()._step(X, derivatives, inverse_rows, grad_b, weights, intercepts, slots, steps,
                                 step_sizes, plan)
        split = X.dense_width
        step_column = step_sizes[:, np.newaxis]
        dense_gradient = rowwise_gradient(derivatives, X.dense) * inverse_rows
        weights[:, :split] = weights[:, :split] - step_column * dense_gradient
        touched, compact_indices = np.unique(X.sparse.indices, return_inverse=True)
        if touched.size:
            # the batch's columns renumbered 0..touched-1: built in O(non-zeros), each column's terms in row order
            # as in the full-width product
            compact = sp.csr_matrix((X.sparse.data, compact_indices.astype(np.int32), X.sparse.indptr),
                                    shape=(X.sparse.shape[0], touched.size))
            columns = split + touched
            sparse_gradient_touched = sparse_gradient(derivatives, compact) * inverse_rows
            weights[:, columns] = weights[:, columns] - step_column * sparse_gradient_touched
        return weights, intercepts - step_sizes * grad_b
