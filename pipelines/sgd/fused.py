"""A compiled (numba) mini-batch epoch for dense inputs: margins, derivatives, gradients and the optimizer
update of every model row, batch after batch, without returning to Python between batches; and the compiled
full passes of the evaluation (:func:`fused_loss_sums`) and of ``gd`` (:func:`fused_gradient_sums`).

:func:`pipelines.sgd.kernels.minibatch_epoch` runs it for a dense design and a loss with one margin per model
(every loss but ``multinomial``); its numpy loop stays the definition for sparse inputs and multinomial models,
and the equivalence test (``tests/unit/sgd/test_sgd_fused.py``) holds the two to 1e-12 relative for every
loss, optimizer and penalty. The numpy loop spends ~85 µs of Python per batch; here a batch of 256 rows costs
a few microseconds per model row, so an epoch is bound by arithmetic and memory instead.

Order of operations, fixed and per model row (so a row's bits never depend on K or on the other rows):

* the batch's rows are gathered once, and transposed (``XT[j, i]``) for the margins;
* ``m_i = ((x_i0 w_0 + x_i1 w_1) + ...) + b``: the sum over inputs in input order, vectorized over the
  batch's rows (each lane is one row's sequential sum: no reassociation, numba's default strict IEEE math);
* ``g_j = (((d_0 x_0j) + d_1 x_1j) + ...) / B``: the sum over the batch's rows in batch order, vectorized
  over inputs; ``g_b = (sum_i d_i) / B``;
* the optimizer's rule of :mod:`pipelines.sgd.optimizers`, element by element, with the penalty terms of
  :class:`~pipelines.sgd.regularization.Penalties` (L2 added to the gradient, or AdamW's decay; L1 soft
  thresholding after the step) on rows whose term is non-zero only.

The inputs may be float32 (``train.dtype: float32``): they are widened to float64 as they are read, so only
memory traffic halves; weights, state and every sum stay float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from pipelines.sgd._types import FloatArray, IntArray


def _compiled(function: Callable[..., Any]) -> Any:
    """``function`` compiled by numba, its machine code cached on disk for the next processes (Spark's Python
    workers) where a cache location is writable, else compiled once per process."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba found no writable cache location (a read-only install)
        return njit(nogil=True)(function)

#: Loss codes of the compiled derivative (scalar-margin losses only).
LOSS_CODES: dict[str, int] = {
    "squared": 0, "logistic": 1, "hinge": 2, "squared_hinge": 3, "modified_huber": 4, "huber": 5,
    "epsilon_insensitive": 6, "squared_epsilon_insensitive": 7, "poisson": 8,
}
#: Optimizer codes; the slots are :data:`pipelines.sgd.optimizers.SLOT_NAMES` in that order.
OPTIMIZER_CODES: dict[str, int] = {
    "sgd": 0, "momentum": 1, "nesterov": 2, "adagrad": 3, "rmsprop": 4, "adam": 5, "adamw": 6,
}


@_compiled
def _derivative(code: int, m: float, y: float, eps: float) -> float:  # pragma: no cover - compiled
    if code == 0:
        return m - y
    if code == 1:
        floored = -700.0 if m < -700.0 else m  # as losses.sigmoid; NaN stays NaN
        return 1.0 / (1.0 + np.exp(-floored)) - y
    if code <= 4:
        t = 2.0 * y - 1.0
        z = t * m
        if code == 2:
            return -t if z <= 1.0 else 0.0
        if code == 3:
            return -2.0 * t * max(0.0, 1.0 - z)
        return -2.0 * t * max(0.0, 1.0 - z) if z >= -1.0 else -4.0 * t
    if code == 8:
        return np.exp(m) - y
    r = m - y
    if code == 5:
        return min(max(r, -eps), eps)
    sign = 1.0 if r > 0.0 else (-1.0 if r < 0.0 else 0.0)
    if code == 6:
        return sign if abs(r) > eps else 0.0
    return 2.0 * sign * max(0.0, abs(r) - eps)


@_compiled
def _value(code: int, m: float, y: float, eps: float) -> float:  # pragma: no cover - compiled
    """The loss of :mod:`pipelines.sgd.losses` at one margin (codes of :data:`LOSS_CODES`)."""
    if code == 0:
        r = m - y
        return 0.5 * r * r
    if code == 1:  # log(1 + e^m) - y m, as max(m, 0) + log1p(e^-|m|) - y m
        return (m if m > 0.0 else 0.0) + np.log1p(np.exp(-abs(m))) - y * m
    if code <= 4:
        z = (2.0 * y - 1.0) * m
        gap = max(0.0, 1.0 - z)
        if code == 2:
            return gap
        if code == 3 or z >= -1.0:
            return gap * gap
        return -4.0 * z
    if code == 8:
        constant = y * np.log(y) if y > 0.0 else 0.0
        return np.exp(m) - y * m + (constant - y)
    r = abs(m - y)
    if code == 5:
        return 0.5 * r * r if r <= eps else eps * r - 0.5 * eps * eps
    gap = max(0.0, r - eps)
    return gap if code == 6 else gap * gap


@_compiled
def _margins(X: FloatArray, row: int, w: FloatArray, out: FloatArray) -> int:  # pragma: no cover - compiled
    """``x_i . w`` for the four rows from ``row`` into ``out`` (fewer at the end; returns how many), each summed
    in input order (the same arithmetic as :func:`fused_epoch`'s margins). The four sums are independent, so
    their adds overlap; nothing is reassociated."""
    d = X.shape[1]
    if row + 4 <= X.shape[0]:
        w0 = w[0]
        a0, a1, a2, a3 = X[row, 0] * w0, X[row + 1, 0] * w0, X[row + 2, 0] * w0, X[row + 3, 0] * w0
        for j in range(1, d):
            wj = w[j]
            a0 += X[row, j] * wj
            a1 += X[row + 1, j] * wj
            a2 += X[row + 2, j] * wj
            a3 += X[row + 3, j] * wj
        out[0], out[1], out[2], out[3] = a0, a1, a2, a3
        return 4
    total = X[row, 0] * w[0]
    for j in range(1, d):
        total += X[row, j] * w[j]
    out[0] = total
    return 1


@_compiled
def fused_loss_sums(X: FloatArray, y: FloatArray, sample_weight: FloatArray, weights: FloatArray,
                    intercepts: FloatArray, loss_code: int, epsilon: float) -> FloatArray:  # pragma: no cover
    """``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row (``sample_weight`` empty: ``s_i = 1``); each model
    row's total runs over the data rows in order."""
    n_rows, d = X.shape
    weighted = sample_weight.shape[0] > 0
    totals = np.zeros(weights.shape[0])
    if d == 0:
        return totals
    margins = np.empty(4)
    for k in range(weights.shape[0]):
        bias, total, i = intercepts[k], 0.0, 0
        while i < n_rows:
            block = _margins(X, i, weights[k], margins)
            for r in range(block):
                value = _value(loss_code, margins[r] + bias, y[i + r], epsilon)
                total += value * sample_weight[i + r] if weighted else value
            i += block
        totals[k] = total
    return totals


@_compiled
def fused_gradient_sums(X: FloatArray, y: FloatArray, sample_weight: FloatArray, weights: FloatArray,
                        intercepts: FloatArray, loss_code: int,
                        epsilon: float) -> tuple[FloatArray, FloatArray, FloatArray]:  # pragma: no cover
    """:func:`pipelines.sgd.kernels.batch_gradients` in one pass per model row: ``sum_i s_i loss'(m_ik) x_i``,
    ``sum_i s_i loss'(m_ik)`` and ``sum_i s_i loss(m_ik)``, every sum over the data rows in order."""
    n_rows, d = X.shape
    n_models = weights.shape[0]
    weighted = sample_weight.shape[0] > 0
    grad_w, grad_b, losses = np.zeros((n_models, d)), np.zeros(n_models), np.zeros(n_models)
    if d == 0:
        return grad_w, grad_b, losses
    margins = np.empty(4)
    for k in range(n_models):
        gradient = grad_w[k]
        bias, bias_total, total, i = intercepts[k], 0.0, 0.0, 0
        while i < n_rows:
            block = _margins(X, i, weights[k], margins)
            for r in range(block):
                margin, label = margins[r] + bias, y[i + r]
                derivative = _derivative(loss_code, margin, label, epsilon)
                value = _value(loss_code, margin, label, epsilon)
                if weighted:
                    derivative *= sample_weight[i + r]
                    value *= sample_weight[i + r]
                bias_total += derivative
                total += value
                for j in range(d):
                    gradient[j] += derivative * X[i + r, j]
            i += block
        grad_b[k], losses[k] = bias_total, total
    return grad_w, grad_b, losses


@_compiled
def _descend(code: int, param: float, grad: float, step_size: float, step: float, slots: FloatArray,
             index: tuple[int, int], momentum: float, beta1: float, beta2: float, alpha: float,
             eps: float) -> float:  # pragma: no cover - compiled
    """One element of :func:`pipelines.sgd.optimizers._descend` (``slots[s][index]`` updated in place)."""
    k, j = index
    if code == 0:
        return param - step_size * grad
    if code <= 2:
        buffer = momentum * slots[0, k, j] + grad
        slots[0, k, j] = buffer
        direction = grad + momentum * buffer if code == 2 else buffer
        return param - step_size * direction
    if code == 3:
        sum_sq = slots[0, k, j] + grad * grad
        slots[0, k, j] = sum_sq
        return param - step_size * grad / (np.sqrt(sum_sq) + eps)
    if code == 4:
        square_avg = alpha * slots[0, k, j] + (1.0 - alpha) * (grad * grad)
        slots[0, k, j] = square_avg
        return param - step_size * grad / (np.sqrt(square_avg) + eps)
    exp_avg = beta1 * slots[0, k, j] + (1.0 - beta1) * grad
    exp_avg_sq = beta2 * slots[1, k, j] + (1.0 - beta2) * (grad * grad)
    slots[0, k, j] = exp_avg
    slots[1, k, j] = exp_avg_sq
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denominator = np.sqrt(exp_avg_sq) / np.sqrt(bias_correction2) + eps
    return param - (step_size / bias_correction1) * exp_avg / denominator


@_compiled
def fused_epoch(X: FloatArray, y: FloatArray, sample_weight: FloatArray, order: IntArray, first_batch: int,
                n_batches: int, batch_size: int, weights: FloatArray, intercepts: FloatArray,
                weight_slots: FloatArray, intercept_slots: FloatArray, steps: IntArray, step_sizes: FloatArray,
                l1: FloatArray, l2: FloatArray, loss_code: int, epsilon: float, optimizer_code: int,
                momentum: float, beta1: float, beta2: float, alpha: float, eps: float,
                fit_intercept: bool) -> None:  # pragma: no cover - compiled
    """Batches ``first_batch .. first_batch + n_batches - 1`` of ``order``, in place on ``weights`` ``(K, d)``,
    ``intercepts`` ``(K,)``, the slots ``(S, K, d)`` / ``(S, K)``, ``steps`` ``(K,)``.

    ``sample_weight``: per-row weights, or an empty array for none (then no multiply at all);
    ``step_sizes``: ``(n_batches, K)``.
    """
    n_rows, d = X.shape
    n_models = weights.shape[0]
    weighted = sample_weight.shape[0] > 0
    gathered = np.empty((batch_size, d))
    transposed = np.empty((d, batch_size))
    labels = np.empty(batch_size)
    row_weights = np.empty(batch_size)
    margins = np.empty(batch_size)
    derivatives = np.empty(batch_size)
    gradient = np.empty(d)
    bias_slots = intercept_slots.reshape(intercept_slots.shape[0], n_models, 1)
    for batch in range(n_batches):
        start = (first_batch + batch) * batch_size
        rows = min(batch_size, n_rows - start)
        for i in range(rows):
            source = order[start + i]
            labels[i] = y[source]
            if weighted:
                row_weights[i] = sample_weight[source]
            for j in range(d):
                gathered[i, j] = X[source, j]
        for j in range(d):  # a second, cache-resident pass (writing both at once measured 30% slower)
            for i in range(rows):
                transposed[j, i] = gathered[i, j]
        inverse_rows = 1.0 / rows
        for k in range(n_models):
            step_size = step_sizes[batch, k]
            steps[k] += 1
            step = float(steps[k])
            # margins: one sequential sum over inputs per batch row, lanes across rows
            w0 = weights[k, 0]
            for i in range(rows):
                margins[i] = transposed[0, i] * w0
            for j in range(1, d):
                w = weights[k, j]
                for i in range(rows):
                    margins[i] += transposed[j, i] * w
            bias = intercepts[k]
            total = 0.0
            for i in range(rows):
                value = _derivative(loss_code, margins[i] + bias, labels[i], epsilon)
                if weighted:
                    value = value * row_weights[i]
                derivatives[i] = value
                total += value
            # gradient: one sequential sum over batch rows per input, lanes across inputs
            for j in range(d):
                gradient[j] = 0.0
            for i in range(rows):
                value = derivatives[i]
                for j in range(d):
                    gradient[j] += value * gathered[i, j]
            l1_k, l2_k = l1[k], l2[k]
            if optimizer_code == 0 and l2_k == 0.0 and l1_k == 0.0:  # plain SGD: a loop the compiler vectorizes
                for j in range(d):
                    weights[k, j] = weights[k, j] - step_size * (gradient[j] * inverse_rows)
            else:
                decay = optimizer_code == 6 and l2_k != 0.0
                smooth = optimizer_code != 6 and l2_k != 0.0
                for j in range(d):
                    grad = gradient[j] * inverse_rows
                    param = weights[k, j]
                    if decay:
                        param = param * (1.0 - step_size * l2_k)
                    elif smooth:
                        grad = grad + l2_k * param
                    updated = _descend(optimizer_code, param, grad, step_size, step, weight_slots, (k, j),
                                       momentum, beta1, beta2, alpha, eps)
                    if l1_k != 0.0:
                        shrunk = max(abs(updated) - step_size * l1_k, 0.0)
                        # sign(w) * shrunk, NaN kept
                        updated = shrunk if updated > 0.0 else (-shrunk if updated < 0.0 else updated * shrunk)
                    weights[k, j] = updated
            if fit_intercept:
                intercepts[k] = _descend(optimizer_code, intercepts[k], total * inverse_rows, step_size, step,
                                         bias_slots, (k, 0), momentum, beta1, beta2, alpha, eps)
