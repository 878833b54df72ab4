"""The compiled (numba) kernel of dense inputs: a mini-batch epoch (margins, derivatives, gradients and the
optimizer update of every model row, batch after batch, without returning to Python between batches), and the
full passes of the evaluation (loss sums) and of ``gd`` (gradient sums).

Nothing here is a loss or an optimizer: each kernel is generated from the rules their owners write once, the
loss's scalar ``value_at``/``derivative_at`` (:class:`~pipelines.sgd.losses.ScalarLoss`; the epoch that also sums
the progressive training loss takes both at each margin from one rule, :func:`margin_rule`: the loss's own
one-``exp`` ``value_and_derivative_at`` where it has one) and the optimizer's
update rule (:data:`~pipelines.sgd.optimizers.UPDATE_RULES`), compiled into it (:func:`epoch_kernel`,
:func:`loss_sums_kernel`, :func:`gradient_sums_kernel`; one per rule pair, built once per process and cached on
disk). :class:`CompiledKernel` is the :class:`~pipelines.sgd.kernels.Kernel` of a scalar loss on dense inputs
(split designs: :mod:`pipelines.sgd.fused_sparse`; multinomial models: :mod:`pipelines.sgd.fused_multinomial`); the
tests hold it to :mod:`pipelines.sgd.numpy_kernel` (1e-10 relative, every loss, optimizer and penalty). The numpy
loop spends ~85 µs of Python per batch; here a batch of 256 rows costs a few microseconds per model row, so an
epoch is bound by arithmetic and memory instead.

Order of operations, fixed and per model row (so a row's bits never depend on K or on the other rows):

* the batch's rows are gathered once, and transposed (``XT[j, i]``) for the margins;
* ``m_i = ((x_i0 w_0 + x_i1 w_1) + ...) + b``: the sum over inputs in input order, vectorized over the
  batch's rows (each lane is one row's sequential sum: no reassociation, numba's default strict IEEE math);
* ``d_i = s_i loss'(m_i)`` (and ``s_i loss(m_i)``) in a loop over the batch's rows of their own, vectorized: the
  rule and the elementary functions it calls (:mod:`pipelines.sgd.elementary`) are inlined into it
  (:func:`~pipelines.sgd.compiling.batch_rule`);
* ``g_j = (((d_0 x_0j) + d_1 x_1j) + ...) / B``: the sum over the batch's rows in batch order, vectorized
  over inputs; ``g_b = (sum_i d_i) / B``; the progressive loss ``sum_i s_i loss_i`` in batch order too (a tile's
  model rows' sums side by side: independent chains of additions);
* both products run for a tile of model rows at once (:mod:`pipelines.sgd.tiles`: each load of the batch's
  inputs serves the tile's rows), the tile changing which loads are shared, never a sum's order;
* the optimizer's rule of :mod:`pipelines.sgd.optimizers`, element by element, with the penalty terms of
  :class:`~pipelines.sgd.regularization.Penalties` (L2 added to the gradient, or AdamW's decay; L1 soft
  thresholding after the step) on rows whose term is non-zero only.

The inputs may be float32 (``train.dtype: float32``): they are widened to float64 as they are read, so only
memory traffic halves; weights, state and every sum stay float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.compiling import batch_rule, compile_kernel, gather_batch, jitable, named_for, row_update
from pipelines.sgd.kernels import Block, EpochPlan, EpochSteps, Models
from pipelines.sgd.losses import PairedScalarLoss, ScalarLoss
from pipelines.sgd.optimizers import SLOT_NAMES, OptimizerSpec, stacked_slots
from pipelines.sgd.tiles import TILE, tile_gradient, tile_margins

ScalarRule = Callable[[float, float, float], float]
PairRule = Callable[[float, float, float], tuple[float, float]]


#: Rows per chunk of the full passes: their margins, then the rule over the chunk (a vectorized loop), then the sums.
CHUNK = 256


@compile_kernel
def chunk_margins(X: FloatArray, start: int, stop: int, w: FloatArray, bias: float,
                   out: FloatArray) -> None:  # pragma: no cover - compiled
    """``x_i . w + bias`` for rows ``start .. stop - 1`` into ``out[: stop - start]``, four rows at a time, each
    summed in input order (the same arithmetic as the epoch kernel's margins). The four sums are independent, so
    their adds overlap; nothing is reassociated."""
    d = X.shape[1]
    row = start
    while row + 4 <= stop:
        w0 = w[0]
        a0, a1, a2, a3 = X[row, 0] * w0, X[row + 1, 0] * w0, X[row + 2, 0] * w0, X[row + 3, 0] * w0
        for j in range(1, d):
            wj = w[j]
            a0 += X[row, j] * wj
            a1 += X[row + 1, j] * wj
            a2 += X[row + 2, j] * wj
            a3 += X[row + 3, j] * wj
        at = row - start
        out[at], out[at + 1], out[at + 2], out[at + 3] = a0 + bias, a1 + bias, a2 + bias, a3 + bias
        row += 4
    while row < stop:
        total = X[row, 0] * w[0]
        for j in range(1, d):
            total += X[row, j] * w[j]
        out[row - start] = total + bias
        row += 1


@functools.cache
def loss_sums_kernel(value_at: ScalarRule) -> Any:
    """The compiled ``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row of the loss whose scalar rule is
    ``value_at`` (``sample_weight`` empty: ``s_i = 1``); each model row's total runs over the data rows in
    order (chunk after chunk, each chunk's rows read from memory once for all model rows)."""
    value = jitable(value_at)

    def loss_sums(X: FloatArray, y: FloatArray, sample_weight: FloatArray, weights: FloatArray,
                  intercepts: FloatArray, epsilon: float) -> FloatArray:  # pragma: no cover - compiled
        n_rows, d = X.shape
        weighted = sample_weight.shape[0] > 0
        totals = np.zeros(weights.shape[0])
        if d == 0:
            return totals
        margins, losses = np.empty(CHUNK), np.empty(CHUNK)
        for start in range(0, n_rows, CHUNK):  # the chunk's rows (in cache) for every model row in turn
            rows = min(CHUNK, n_rows - start)
            for k in range(weights.shape[0]):
                chunk_margins(X, start, start + rows, weights[k], intercepts[k], margins)
                for r in range(rows):
                    loss = value(margins[r], y[start + r], epsilon)
                    losses[r] = loss * sample_weight[start + r] if weighted else loss
                total = totals[k]
                for r in range(rows):
                    total += losses[r]
                totals[k] = total
        return totals

    return compile_kernel(named_for(loss_sums, value_at), (value_at, chunk_margins.py_func))


@functools.cache
def gradient_sums_kernel(value_at: ScalarRule, derivative_at: ScalarRule) -> Any:
    """The compiled gradient pass of a loss's scalar rules: ``sum_i s_i loss'(m_ik) x_i``, ``sum_i s_i loss'(m_ik)``
    and ``sum_i s_i loss(m_ik)`` per model row, every sum over the data rows in order (chunk after chunk, each
    chunk's rows read from memory once for all model rows)."""
    value, derivative = jitable(value_at), jitable(derivative_at)

    def gradient_sums(X: FloatArray, y: FloatArray, sample_weight: FloatArray, weights: FloatArray,
                      intercepts: FloatArray,
                      epsilon: float) -> tuple[FloatArray, FloatArray, FloatArray]:  # pragma: no cover - compiled
        n_rows, d = X.shape
        n_models = weights.shape[0]
        weighted = sample_weight.shape[0] > 0
        grad_w, grad_b, losses = np.zeros((n_models, d)), np.zeros(n_models), np.zeros(n_models)
        if d == 0:
            return grad_w, grad_b, losses
        margins, slopes, values = np.empty(CHUNK), np.empty(CHUNK), np.empty(CHUNK)
        for start in range(0, n_rows, CHUNK):  # the chunk's rows (in cache) for every model row in turn
            rows = min(CHUNK, n_rows - start)
            for k in range(n_models):
                gradient = grad_w[k]
                bias_total, total = grad_b[k], losses[k]
                chunk_margins(X, start, start + rows, weights[k], intercepts[k], margins)
                for r in range(rows):
                    slope = derivative(margins[r], y[start + r], epsilon)
                    loss = value(margins[r], y[start + r], epsilon)
                    if weighted:
                        slope *= sample_weight[start + r]
                        loss *= sample_weight[start + r]
                    slopes[r], values[r] = slope, loss
                for r in range(rows):
                    slope = slopes[r]
                    bias_total += slope
                    total += values[r]
                    for j in range(d):
                        gradient[j] += slope * X[start + r, j]
                grad_b[k], losses[k] = bias_total, total
        return grad_w, grad_b, losses

    return compile_kernel(named_for(gradient_sums, value_at, derivative_at),
                          (value_at, derivative_at, chunk_margins.py_func))


@functools.cache
def _slope_only(derivative_at: ScalarRule) -> PairRule:
    """``(0, dloss/dm)``: the margin rule of an epoch that sums no loss (the derivative's rule alone)."""
    derivative = jitable(derivative_at)

    def zero_and_derivative_at(m: float, y: float, epsilon: float) -> tuple[float, float]:
        return 0.0, derivative(m, y, epsilon)

    return named_for(zero_and_derivative_at, derivative_at)


@functools.cache
def _one_after_the_other(value_at: ScalarRule, derivative_at: ScalarRule) -> PairRule:
    """``(loss, dloss/dm)`` of a loss without a shared transcendental: its two rules (nothing to share)."""
    value, derivative = jitable(value_at), jitable(derivative_at)

    def value_and_derivative_at(m: float, y: float, epsilon: float) -> tuple[float, float]:
        return value(m, y, epsilon), derivative(m, y, epsilon)

    return named_for(value_and_derivative_at, value_at, derivative_at)


def margin_rule(loss: ScalarLoss, progressive_loss: bool) -> tuple[PairRule, tuple[Callable[..., Any], ...]]:
    """The epoch's rule at one margin, ``(loss or 0, dloss/dm)``, and the loss's rules it compiles in: the
    derivative alone, or with the progressive loss the loss's shared rule
    (:class:`~pipelines.sgd.losses.PairedScalarLoss`: one ``exp`` for both) or its two rules. The derivative is
    the same bits in every case."""
    if not progressive_loss:
        return _slope_only(loss.derivative_at), (loss.derivative_at,)
    if isinstance(loss, PairedScalarLoss):
        return loss.value_and_derivative_at, (loss.value_and_derivative_at,)
    return _one_after_the_other(loss.value_at, loss.derivative_at), (loss.value_at, loss.derivative_at)


@functools.cache
def epoch_kernel(margin_at: PairRule, loss_rules: tuple[Callable[..., Any], ...], update_rule: Callable[..., Any],
                 decoupled_decay: bool) -> Any:
    """The compiled mini-batch epoch of a loss's rule at one margin ``margin_at`` (:func:`margin_rule`, compiled
    from ``loss_rules``) and an optimizer's ``update_rule`` (``decoupled_decay``: AdamW's L2 term, a decay before
    the rule, instead of a gradient term).

    The kernel runs batches ``first_batch .. first_batch + n_batches - 1`` of ``order``, in place on ``weights``
    ``(K, d)``, ``intercepts`` ``(K,)``, the slots ``(S, K, d)`` / ``(S, K)``, ``steps`` ``(K,)``;
    ``sample_weight``: per-row weights, or an empty array for none (then no multiply at all); ``step_sizes``:
    ``(n_batches, K)``. ``loss_sums`` ``(K,)`` gets each row's progressive loss added: per batch
    ``sum_i s_i loss(m_ik, y_i)`` at the margins the batch's update is computed from, the rows in batch order,
    each batch's total added in batch order (zeros when ``margin_at`` gives no loss).
    """
    derivatives_and_losses, update, update_row = jitable(batch_rule(margin_at)), jitable(update_rule), \
        jitable(row_update(update_rule, decoupled_decay))

    def epoch(X: FloatArray, y: FloatArray, sample_weight: FloatArray, order: Any, first_batch: int,
              n_batches: int, batch_size: int, weights: FloatArray, intercepts: FloatArray,
              weight_slots: FloatArray, intercept_slots: FloatArray, steps: Any, step_sizes: FloatArray,
              l1: FloatArray, l2: FloatArray, epsilon: float, constants: Any, fit_intercept: bool,
              loss_sums: FloatArray) -> None:  # pragma: no cover - compiled
        n_rows, d = X.shape
        n_models = weights.shape[0]
        weighted = sample_weight.shape[0] > 0
        gathered = np.empty((batch_size, d))
        transposed = np.empty((d, batch_size))
        labels = np.empty(batch_size)
        row_weights = np.empty(batch_size)
        margins = np.empty((TILE, batch_size))
        derivatives = np.empty((TILE, batch_size))
        losses = np.empty((TILE, batch_size))
        totals = np.empty((2, TILE))
        gradient = np.empty((TILE, d))
        bias_gradients = np.empty(TILE)
        every_column = np.zeros(0, dtype=np.int64)
        for batch in range(n_batches):
            start = (first_batch + batch) * batch_size
            rows = min(batch_size, n_rows - start)
            gather_batch(X, y, sample_weight, order, start, rows, gathered, transposed, labels, row_weights)
            inverse_rows = 1.0 / rows
            first = 0
            while first < n_models:
                # TILE model rows share each load of the batch's inputs; the remainder goes one row at a time
                tile = TILE if first + TILE <= n_models else 1
                tile_margins(transposed, weights, first, tile, rows, margins)
                for t in range(tile):
                    bias = intercepts[first + t]
                    for i in range(rows):
                        margins[t, i] += bias
                derivatives_and_losses(margins, labels, row_weights, weighted, rows, tile, epsilon, derivatives,
                                       losses, totals)
                for t in range(tile):
                    bias_gradients[t] = totals[0, t]
                    loss_sums[first + t] += totals[1, t]
                tile_gradient(gathered, derivatives, tile, rows, gradient)
                for t in range(tile):
                    k = first + t
                    step_size = step_sizes[batch, k]
                    steps[k] += 1
                    step = float(steps[k])
                    update_row(weights, k, every_column, d, gradient[t], inverse_rows, step_size, step, l1[k], l2[k],
                               weight_slots, constants)
                    if fit_intercept:
                        intercepts[k] = update(intercepts[k], bias_gradients[t] * inverse_rows, step_size, step,
                                               intercept_slots, (k,), constants)
                first += tile

    return compile_kernel(named_for(epoch, margin_at, update_rule, decoupled_decay),
                          (margin_at, *loss_rules, batch_rule(margin_at), update_rule, tile_margins, tile_gradient,
                           gather_batch, row_update(update_rule, decoupled_decay)))


def _contiguous(block: Block) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The block as the kernels take it: contiguous ``X`` (float32 stays float32: widened as read), float64
    labels, and the row weights or an empty array for none."""
    sample_weight = np.zeros(0) if block.sample_weight is None else \
        np.ascontiguousarray(block.sample_weight, dtype=np.float64)
    return np.ascontiguousarray(block.X), np.ascontiguousarray(block.y, dtype=np.float64), sample_weight


def _rows(weights: FloatArray, intercepts: FloatArray) -> tuple[FloatArray, FloatArray]:
    return np.ascontiguousarray(weights, dtype=np.float64), np.ascontiguousarray(intercepts, dtype=np.float64)


@dataclass(frozen=True)
class CompiledKernel:
    """The :class:`~pipelines.sgd.kernels.Kernel` of a one-margin loss on dense inputs: the compiled kernels of
    the loss's and the optimizer's rules (built on first use in the process that trains)."""

    loss: ScalarLoss
    optimizer: OptimizerSpec

    def loss_sums(self, block: Block, weights: FloatArray, intercepts: FloatArray) -> FloatArray:
        """``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row, shape ``(K,)``."""
        sums: FloatArray = loss_sums_kernel(self.loss.value_at)(*_contiguous(block), *_rows(weights, intercepts),
                                                                 self.loss.epsilon)
        return sums

    def gradient_sums(self, block: Block, weights: FloatArray,
                      intercepts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """:meth:`pipelines.sgd.kernels.Kernel.gradient_sums` in one compiled pass over the rows."""
        kernel = gradient_sums_kernel(self.loss.value_at, self.loss.derivative_at)
        sums: tuple[FloatArray, FloatArray, FloatArray] = kernel(*_contiguous(block), *_rows(weights, intercepts),
                                                                 self.loss.epsilon)
        return sums

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        """The epoch's batches in the compiled epoch kernel; ``models.state`` is the caller's copy and is
        advanced."""
        state, optimizer = models.state, self.optimizer
        names = SLOT_NAMES[optimizer.name]
        weights, intercepts = models.weights.copy(), models.intercepts.copy()
        weight_slots = stacked_slots(state.weight_slots, names, weights.shape)
        intercept_slots = stacked_slots(state.intercept_slots, names, intercepts.shape)
        step_counts = state.step.copy()
        loss_sums = np.zeros(weights.shape[0])
        kernel = epoch_kernel(*margin_rule(self.loss, plan.progressive_loss), optimizer.rule, optimizer.decoupled_decay)
        kernel(*_contiguous(block), steps.order, steps.first_batch, steps.n_batches, plan.batch_size, weights,
               intercepts, weight_slots, intercept_slots, step_counts,
               np.ascontiguousarray(steps.step_sizes, dtype=np.float64), plan.penalties.l1, plan.penalties.l2,
               self.loss.epsilon, optimizer.constants, plan.fit_intercept, loss_sums)
        state.step = step_counts
        for index, name in enumerate(names):
            state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
        return Models(weights, intercepts, state, loss_sums if plan.progressive_loss else None)
