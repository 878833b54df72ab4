"""The compiled (numba) mini-batch epoch of a one-margin loss on a split design (dense and CSR inputs side by side,
:class:`~pipelines.sgd.design.SplitDesign`).

Per batch: the dense part's rows are gathered and their products run by the register-tiled kernels of
:mod:`pipelines.sgd.tiles`; the sparse part's rows are gathered as CSR (their non-zeros in storage order), the
batch's touched columns listed once (first touch first) and their weights gathered for every model row. Per tile
of model rows (each non-zero's loads shared by the tile, as the dense products share theirs):

* ``m_i = (x_i,dense . w_dense + b) + (sum over the row's non-zeros of v w_c, in storage order)``, the order of the
  numpy definition (:class:`~pipelines.sgd.numpy_kernel.SparseKernel`);
* the loss's rule at each margin (:func:`~pipelines.sgd.fused.margin_rule`), times the row's weight;
* the sparse gradient ``g_c = sum_i d_i v_ic`` over the batch's rows in order, for the touched columns only (SciPy's
  ``X^T d`` adds each column's terms in row order too);
* under plain SGD a row without a penalty moves its dense and touched columns only (the other columns' step is
  ``w - s 0 = w``: the same bits), so a step costs in the batch's non-zeros, not the width; with no penalty on any
  row the epoch holds the sparse weights by column (every model row's weight of a column side by side: a non-zero's
  weights are one cache line, where a model row each cost one cache miss on a wide model) and writes them back at
  its end. Any other optimizer, or a row's penalty, moves every column of the row (state and decay move where the
  gradient is 0), as the numpy kernel does.

Every sum is per model row, so a row's bits do not depend on the other rows (grid points) in the pass, nor on which
of the two kinds of step the pass takes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba.extending import register_jitable

from pipelines.sgd._types import FloatArray
from pipelines.sgd.compiling import (
    batch_rule,
    by_column_buffer,
    compile_kernel,
    gather_batch,
    held_by_column,
    jitable,
    named_for,
    row_update,
)
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.fused import PairRule, margin_rule
from pipelines.sgd.kernels import Block, EpochPlan, EpochSteps, Models
from pipelines.sgd.losses import ScalarLoss
from pipelines.sgd.numpy_kernel import SparseKernel
from pipelines.sgd.optimizers import SLOT_NAMES, sgd_rule, stacked_slots
from pipelines.sgd.tiles import TILE, tile_gradient, tile_margins


@register_jitable
def tile_sparse_margins(batch_indptr: Any, slots: Any, values: FloatArray, touched_weights: FloatArray, first: int,
                        tile: int, rows: int, sums: FloatArray) -> None:  # pragma: no cover - compiled
    """``sums[t, i]``: row ``i``'s sparse margin of model row ``first + t`` (``t < tile``, :data:`TILE` or 1), over
    its non-zeros in storage order from 0.0; ``touched_weights[slot, k]``: the weights of the batch's touched
    columns (``slots``: each non-zero's column among them). A tile's rows share each non-zero's loads."""
    if tile == TILE:
        for i in range(rows):
            s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
            for entry in range(batch_indptr[i], batch_indptr[i + 1]):
                value, slot = values[entry], slots[entry]
                s0 += value * touched_weights[slot, first]
                s1 += value * touched_weights[slot, first + 1]
                s2 += value * touched_weights[slot, first + 2]
                s3 += value * touched_weights[slot, first + 3]
            sums[0, i], sums[1, i], sums[2, i], sums[3, i] = s0, s1, s2, s3
        return
    for i in range(rows):
        total = 0.0
        for entry in range(batch_indptr[i], batch_indptr[i + 1]):
            total += values[entry] * touched_weights[slots[entry], first]
        sums[0, i] = total


@register_jitable
def tile_sparse_gradient(batch_indptr: Any, slots: Any, values: FloatArray, derivatives: FloatArray, tile: int,
                         rows: int, n_touched: int, gradient: FloatArray) -> None:  # pragma: no cover - compiled
    """``gradient[slot, t]``: the touched column's ``sum_i derivatives[t, i] v_i`` over the batch's rows in order
    (from 0.0), for ``t < tile`` (:data:`TILE` or 1)."""
    for p in range(n_touched):
        gradient[p, 0], gradient[p, 1], gradient[p, 2], gradient[p, 3] = 0.0, 0.0, 0.0, 0.0
    if tile == TILE:
        for i in range(rows):
            d0, d1, d2, d3 = derivatives[0, i], derivatives[1, i], derivatives[2, i], derivatives[3, i]
            for entry in range(batch_indptr[i], batch_indptr[i + 1]):
                value, slot = values[entry], slots[entry]
                gradient[slot, 0] += value * d0
                gradient[slot, 1] += value * d1
                gradient[slot, 2] += value * d2
                gradient[slot, 3] += value * d3
        return
    for i in range(rows):
        derivative = derivatives[0, i]
        for entry in range(batch_indptr[i], batch_indptr[i + 1]):
            gradient[slots[entry], 0] += values[entry] * derivative


@functools.cache
def sparse_epoch_kernel(margin_at: PairRule, loss_rules: tuple[Callable[..., Any], ...],
                        update_rule: Callable[..., Any], decoupled_decay: bool) -> Any:
    """The compiled epoch of a split design (the arguments as :func:`pipelines.sgd.fused.epoch_kernel`'s):
    ``dense`` ``(n, d_dense)`` and the CSR part's ``indptr``, ``indices``, ``values``; ``max_row_nonzeros``: the
    most non-zeros of one row; ``sparse_steps``: the rule is plain SGD (rows without a penalty then move their dense
    and touched columns only); ``by_column``: a :func:`~pipelines.sgd.compiling.by_column_buffer` of the sparse
    width when, besides, no row has a penalty (the sparse weights are then held by column for the epoch), else of no
    rows."""
    derivatives_and_losses, update = jitable(batch_rule(margin_at)), jitable(update_rule)
    update_row = jitable(row_update(update_rule, decoupled_decay))

    def epoch(dense: FloatArray, indptr: Any, indices: Any, values: Any, max_row_nonzeros: int, y: FloatArray,
              sample_weight: FloatArray, order: Any, first_batch: int, n_batches: int, batch_size: int,
              weights: FloatArray, intercepts: FloatArray, weight_slots: FloatArray, intercept_slots: FloatArray,
              steps: Any, step_sizes: FloatArray, l1: FloatArray, l2: FloatArray, epsilon: float, constants: Any,
              fit_intercept: bool, sparse_steps: bool, by_column: FloatArray,
              loss_sums: FloatArray) -> None:  # pragma: no cover - compiled
        n_rows, split = dense.shape
        n_models, width = weights.shape
        sparse_width = width - split
        weighted = sample_weight.shape[0] > 0
        # ``by_column`` has the sparse width's rows for plain SGD without a penalty on any row: the steps move the
        # touched columns only, on the sparse weights held by column (every model row's weight of a column side by
        # side, for the epoch): a non-zero's weights then cost one cache line, where the rows' own arrays cost one
        # cache miss per model row. Otherwise (no rows) the rows without a penalty move their touched columns in
        # their own arrays, the others every column.
        by_column_steps = by_column.shape[0] > 0
        if by_column.shape[1] != n_models or (by_column_steps and (by_column.shape[0] != sparse_width or
                                                                   not sparse_steps or l1.any() or l2.any())):
            raise ValueError("by_column: (the sparse width, the model rows) under plain SGD without penalties, "
                             "else no rows")
        held_by_column(weights, split, by_column)
        gathered = np.empty((batch_size, split))
        transposed = np.empty((split, batch_size))
        labels = np.empty(batch_size)
        row_weights = np.empty(batch_size)
        batch_indptr = np.empty(batch_size + 1, dtype=np.int64)
        capacity = batch_size * max_row_nonzeros
        batch_slots = np.empty(capacity, dtype=np.int64)  # each non-zero's place among the batch's touched columns
        batch_values = np.empty(capacity)
        most_touched = min(capacity, sparse_width)
        touched = np.empty(most_touched, dtype=np.int64)  # the batch's touched sparse columns, first touch first
        touched_weights = np.empty((most_touched, n_models))  # their weights as the batch starts, rows side by side
        touched_gradient = np.empty((most_touched, TILE))
        slot_of = np.full(sparse_width, -1, dtype=np.int64)  # batch * capacity + place, for the batch's columns
        full_gradient = np.zeros(width)
        margins = np.zeros((TILE, batch_size))
        sparse_margins = np.empty((TILE, batch_size))
        derivatives = np.empty((TILE, batch_size))
        losses = np.empty((TILE, batch_size))
        totals = np.empty((2, TILE))
        gradient = np.empty((TILE, split))
        bias_gradients = np.empty(TILE)
        every_column = np.zeros(0, dtype=np.int64)
        for batch in range(n_batches):
            start = (first_batch + batch) * batch_size
            rows = min(batch_size, n_rows - start)
            gather_batch(dense, y, sample_weight, order, start, rows, gathered, transposed, labels, row_weights)
            n_touched, cursor, first_slot = 0, 0, batch * capacity
            batch_indptr[0] = 0
            for i in range(rows):
                source = order[start + i]
                for entry in range(indptr[source], indptr[source + 1]):
                    column = indices[entry]
                    if slot_of[column] < first_slot:
                        slot_of[column] = first_slot + n_touched
                        touched[n_touched] = column
                        n_touched += 1
                    batch_slots[cursor], batch_values[cursor] = slot_of[column] - first_slot, values[entry]
                    cursor += 1
                batch_indptr[i + 1] = cursor
            for p in range(n_touched):
                column = touched[p]
                if by_column_steps:
                    for k in range(n_models):
                        touched_weights[p, k] = by_column[column, k]
                else:
                    for k in range(n_models):
                        touched_weights[p, k] = weights[k, split + column]
            inverse_rows = 1.0 / rows
            first = 0
            while first < n_models:
                tile = TILE if first + TILE <= n_models else 1
                if split > 0:
                    tile_margins(transposed, weights, first, tile, rows, margins)
                tile_sparse_margins(batch_indptr, batch_slots, batch_values, touched_weights, first, tile, rows,
                                    sparse_margins)
                for t in range(tile):
                    bias = intercepts[first + t]
                    for i in range(rows):
                        margins[t, i] = ((margins[t, i] if split > 0 else 0.0) + bias) + sparse_margins[t, i]
                derivatives_and_losses(margins, labels, row_weights, weighted, rows, tile, epsilon, derivatives, losses,
                                       totals)
                for t in range(tile):
                    bias_gradients[t] = totals[0, t]
                    loss_sums[first + t] += totals[1, t]
                tile_gradient(gathered, derivatives, tile, rows, gradient)
                tile_sparse_gradient(batch_indptr, batch_slots, batch_values, derivatives, tile, rows, n_touched,
                                     touched_gradient)
                for t in range(tile):
                    k = first + t
                    step_size = step_sizes[batch, k]
                    steps[k] += 1
                    step = float(steps[k])
                    if by_column_steps or (sparse_steps and l1[k] == 0.0 and l2[k] == 0.0):
                        update_row(weights, k, every_column, split, gradient[t], inverse_rows, step_size, step,
                                   0.0, 0.0, weight_slots, constants)
                        # update_row's step without a penalty on the touched columns, wherever the row's sparse
                        # weights are held: by column for the epoch, or in the row's own array
                        row_sparse = by_column[:, k] if by_column_steps else weights[k, split:]
                        for p in range(n_touched):
                            column = touched[p]
                            row_sparse[column] = update(row_sparse[column], touched_gradient[p, t] * inverse_rows,
                                                        step_size, step, weight_slots, (k, split + column), constants)
                    else:
                        for j in range(split):
                            full_gradient[j] = gradient[t, j]
                        for c in range(sparse_width):
                            full_gradient[split + c] = 0.0
                        for p in range(n_touched):
                            full_gradient[split + touched[p]] = touched_gradient[p, t]
                        update_row(weights, k, every_column, width, full_gradient, inverse_rows, step_size, step,
                                   l1[k], l2[k], weight_slots, constants)
                    if fit_intercept:
                        intercepts[k] = update(intercepts[k], bias_gradients[t] * inverse_rows, step_size, step,
                                               intercept_slots, (k,), constants)
                first += tile
        if by_column_steps:
            for k in range(n_models):
                for c in range(sparse_width):
                    weights[k, split + c] = by_column[c, k]

    return compile_kernel(named_for(epoch, margin_at, update_rule, decoupled_decay),
                          (margin_at, *loss_rules, batch_rule(margin_at), update_rule, tile_margins, tile_gradient,
                           tile_sparse_margins, tile_sparse_gradient, gather_batch, held_by_column,
                           row_update(update_rule, decoupled_decay)))


@dataclass(frozen=True)
class CompiledSparseKernel(SparseKernel):
    """The kernel of a one-margin loss on split designs: the epoch compiled (:func:`sparse_epoch_kernel`), the full
    passes (:meth:`loss_sums`, :meth:`gradient_sums`) those of the numpy kernel (SciPy's products)."""

    loss: ScalarLoss

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        """The epoch's batches in the compiled kernel; ``models.state`` is the caller's copy and is advanced."""
        if not isinstance(block.X, SplitDesign):
            raise TypeError(f"CompiledSparseKernel runs split designs, got {type(block.X).__name__}")
        design, state, optimizer = block.X, models.state, self.optimizer
        names = SLOT_NAMES[optimizer.name]
        weights = np.ascontiguousarray(models.weights, dtype=np.float64).copy()
        intercepts = np.ascontiguousarray(models.intercepts, dtype=np.float64).copy()
        weight_slots = stacked_slots(state.weight_slots, names, weights.shape)
        intercept_slots = stacked_slots(state.intercept_slots, names, intercepts.shape)
        step_counts = state.step.copy()
        loss_sums = np.zeros(weights.shape[0])
        sparse = design.sparse
        max_row_nonzeros = int(np.diff(sparse.indptr).max(initial=0))
        sample_weight = np.zeros(0) if block.sample_weight is None else \
            np.ascontiguousarray(block.sample_weight, dtype=np.float64)
        sparse_steps = optimizer.rule is sgd_rule
        kernel = sparse_epoch_kernel(*margin_rule(self.loss, plan.progressive_loss), optimizer.rule,
                                     optimizer.decoupled_decay)
        kernel(np.ascontiguousarray(design.dense), sparse.indptr, sparse.indices, sparse.data, max(max_row_nonzeros, 1),
               np.ascontiguousarray(block.y, dtype=np.float64), sample_weight, steps.order, steps.first_batch,
               steps.n_batches, plan.batch_size, weights, intercepts, weight_slots, intercept_slots, step_counts,
               np.ascontiguousarray(steps.step_sizes, dtype=np.float64), plan.penalties.l1, plan.penalties.l2,
               self.loss.epsilon, optimizer.constants, plan.fit_intercept, sparse_steps,
               by_column_buffer(weights, design.dense.shape[1], sparse_steps and plan.penalties.is_zero),
               loss_sums)
        state.step = step_counts
        for index, name in enumerate(names):
            state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
        return Models(weights, intercepts, state, loss_sums if plan.progressive_loss else None)
