"""Per-block numerics the distributed layer runs on each partition.

Two training modes share these kernels:

* full-batch gradient descent: every partition returns :func:`batch_gradients`
  (sums, not means) and :mod:`pipelines.sgd.gradient_step` turns the total into one step
  (MLlib's ``treeAggregate`` of ``(grad_sum, loss_sum, count)``);
* mini-batch SGD with model averaging: every partition runs :func:`minibatch_epoch`
  on its rows from the same starting models, the driver averages the returned model
  rows (and optimizer states) weighted by row counts.

All K model rows are handled at once, each row with its own products (so a row's bits never depend on
which other rows share the pass; see :func:`compute_margins`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np
import scipy.sparse as sp

from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import Design, SplitDesign, sparse_gradient, sparse_margins_by_row, take_rows
from pipelines.sgd.losses import Loss, get_loss
from pipelines.sgd.optimizers import SLOT_NAMES, OptimizerSpec, OptimizerState, apply_update
from pipelines.sgd.regularization import Penalties, Regularization, as_penalties
from pipelines.sgd.schedules import StepSchedule, multiplier

#: Above this many rows (whole blocks rather than mini-batches) products run chunk by chunk of this many
#: rows, one model row at a time. The path depends only on the number of data rows, never on K, so a
#: model row's bits do not depend on which other rows are computed with it.
_CHUNK_ROWS = 4096


def compute_margins(X: Design, weights: FloatArray, intercepts: FloatArray) -> FloatArray:
    """Margins ``m_ik = x_i . w_k + b_k``.

    Computed as K independent products (a stacked ``matmul`` of ``(1, d) @ (d, n)`` items), not one
    ``(n, d) @ (d, K)`` GEMM: a GEMM's blocking, and so its rounding, depends on K, and a model row must
    get bit-identical results whichever other rows (rates) it is trained with.

    A :class:`~pipelines.sgd.design.SplitDesign` adds its sparse part's products to the dense part's margins.

    Parameters
    ----------
    X : ndarray of shape (n, d), or SplitDesign
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)

    Returns
    -------
    ndarray of shape (n, K)
        A transposed view of a C-contiguous ``(K, n)`` array (dense ``X``).
    """
    if isinstance(X, SplitDesign):
        split = X.dense_width
        # (K, n) C-contiguous, returned transposed like the dense path: callers' products then take the same
        # memory layout, hence the same code path, whatever K.
        # the sparse part's weights are used in place (each model row's slice is contiguous): copying (K, width)
        # every step would cost in the width
        by_row = compute_margins(X.dense, np.ascontiguousarray(weights[:, :split]), intercepts).T + \
            sparse_margins_by_row(X.sparse, weights[:, split:])
        return by_row.T
    if X.shape[0] > _CHUNK_ROWS:
        # Whole blocks: chunks of rows that stay in cache, one matrix-vector product per model row each, so
        # X is read from memory once (a stacked matmul over all rows would copy X.T for every model row).
        margins_by_row = np.empty((weights.shape[0], X.shape[0]))
        for start in range(0, X.shape[0], _CHUNK_ROWS):
            chunk = X[start : start + _CHUNK_ROWS]
            for k in range(weights.shape[0]):
                np.dot(chunk, weights[k], out=margins_by_row[k, start : start + chunk.shape[0]])
    else:
        margins_by_row = np.matmul(weights[:, np.newaxis, :], X.T)[:, 0, :]
    margins_by_row += intercepts[:, np.newaxis]
    return margins_by_row.T


def rowwise_gradient(derivatives: FloatArray, X: Design) -> FloatArray:
    """``sum_i derivatives[i, k] * x_i`` for every row k, shape ``(K, d)``.

    K independent ``(1, n) @ (n, d)`` products, so a row's result does not depend on K (see
    :func:`compute_margins`); a split design's sparse part costs in its non-zeros.
    """
    if isinstance(X, SplitDesign):
        return np.hstack([rowwise_gradient(derivatives, X.dense), sparse_gradient(derivatives, X.sparse)])
    if X.shape[0] > _CHUNK_ROWS:
        by_row = np.ascontiguousarray(derivatives.T)
        gradient = np.zeros((by_row.shape[0], X.shape[1]))
        partial = np.empty(X.shape[1])
        for start in range(0, X.shape[0], _CHUNK_ROWS):  # chunk sums added in a fixed order
            chunk = X[start : start + _CHUNK_ROWS]
            for k in range(by_row.shape[0]):
                np.dot(by_row[k, start : start + chunk.shape[0]], chunk, out=partial)
                gradient[k] += partial
        return gradient
    stacked: FloatArray = np.matmul(derivatives.T[:, np.newaxis, :], X)[:, 0, :]
    return stacked


def batch_gradients(
    X: Design,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    loss: Loss | str,
    sample_weight: FloatArray | None = None,
    compiled: bool = True,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradient and loss *sums* over the rows of one block, for all K models.

    ``grad_w_sum[k] = sum_i s_i loss'(m_ik, y_i) * x_i``,
    ``grad_b_sum[k] = sum_i s_i loss'(m_ik, y_i)``,
    ``loss_sum[k] = sum_i s_i loss(m_ik, y_i)``; no penalty is included; ``s_i`` = ``sample_weight[i]``
    (1 when None: then the weights are not multiplied at all, so unweighted results keep their bits).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    loss : Loss or str
    sample_weight : ndarray of shape (n,), optional
    compiled : bool
        Dense inputs and a one-margin loss run :func:`pipelines.sgd.fused.fused_gradient_sums` (every sum over
        the rows in order); False: the numpy definition below (equal to ~1e-12).

    Returns
    -------
    grad_w_sum : ndarray of shape (K, d)
    grad_b_sum : ndarray of shape (K,)
    loss_sum : ndarray of shape (K,)
    """
    loss_function = _resolve_loss(loss)
    if compiled and _compilable(X, loss_function):
        from pipelines.sgd.fused import fused_gradient_sums

        return fused_gradient_sums(*_compiled_arguments(X, y, weights, intercepts, loss_function, sample_weight))
    margins = compute_margins(X, weights, intercepts)
    derivatives = _weighted(loss_function.derivative(margins, y), sample_weight)
    grad_w_sum = rowwise_gradient(derivatives, X)
    grad_b_sum: FloatArray = np.add.reduce(derivatives, axis=0)
    loss_sum: FloatArray = _weighted(loss_function.value(margins, y), sample_weight).sum(axis=0)
    return grad_w_sum, grad_b_sum, loss_sum


def _weighted(per_row: FloatArray, sample_weight: FloatArray | None) -> FloatArray:
    """``per_row`` ``(n, K)`` times each row's weight; unchanged (the same array) without weights."""
    if sample_weight is None:
        return per_row
    result: FloatArray = per_row * sample_weight[:, np.newaxis]
    return result


def loss_sums(
    X: Design,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    loss: Loss | str,
    sample_weight: FloatArray | None = None,
    compiled: bool = True,
) -> FloatArray:
    """``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row, shape ``(K,)`` (no penalty; ``s_i = 1`` when
    ``sample_weight`` is None).

    Dense inputs and a one-margin loss run :func:`pipelines.sgd.fused.fused_loss_sums` (``compiled=False``: the
    numpy definition, which it equals to ~1e-13).
    """
    loss_function = _resolve_loss(loss)
    if compiled and _compilable(X, loss_function):
        from pipelines.sgd.fused import fused_loss_sums

        return fused_loss_sums(*_compiled_arguments(X, y, weights, intercepts, loss_function, sample_weight))
    values = loss_function.value(compute_margins(X, weights, intercepts), y)
    result: FloatArray = _weighted(values, sample_weight).sum(axis=0)
    return result


def _compilable(X: Design, loss: Loss) -> TypeGuard[FloatArray]:
    """The compiled kernels take dense inputs (with rows) and one margin per model."""
    return isinstance(X, np.ndarray) and loss.outputs == 1 and X.shape[0] > 0


def _compiled_arguments(X: FloatArray, y: FloatArray, weights: FloatArray, intercepts: FloatArray, loss: Loss,
                        sample_weight: FloatArray | None) -> tuple[Any, ...]:
    """The arguments :mod:`pipelines.sgd.fused`'s full passes share: contiguous arrays, the loss's code."""
    from pipelines.sgd.fused import LOSS_CODES

    weights_array = np.zeros(0) if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
    return (np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=np.float64), weights_array,
            np.ascontiguousarray(weights, dtype=np.float64), np.ascontiguousarray(intercepts, dtype=np.float64),
            LOSS_CODES[loss.name], float(getattr(loss, "epsilon", 0.0)))


def batches_per_epoch(n_rows: int, batch_size: int) -> int:
    """Mini-batches in one pass over ``n_rows`` rows: ``ceil(n_rows / batch_size)`` (the last may be smaller).

    The one definition of an epoch's step count: the kernels, the engine's strategies and the reference
    trainer all use it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return -(-n_rows // batch_size)


def small_table_batch_size(partition_rows: Sequence[int], batch_size: int, min_steps: int) -> int:
    """The mini-batch size that gives at least ``min_steps`` steps per epoch on the largest partition.

    ``batch_size`` itself when it already does (or ``min_steps`` is 0); otherwise ``max(1, n // min_steps)``
    for the largest partition's ``n`` training rows, so that ``ceil(n / b) >= min_steps``. A table of a few
    hundred rows with the default 256 would otherwise take one or two steps per epoch.
    """
    largest = max(partition_rows, default=0)
    if min_steps <= 0 or largest == 0 or batches_per_epoch(largest, batch_size) >= min_steps:
        return batch_size
    return max(1, largest // min_steps)


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of one epoch: ``np.random.default_rng([seed, epoch]).permutation(n_rows)``.

    Deterministic in ``(seed, epoch, n_rows)``; independent of K, so a model row sees
    the same batches whichever other rows it is trained with.
    """
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def minibatch_epoch(
    X: Design,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    opt_state: OptimizerState,
    *,
    loss: Loss | str,
    optimizer: OptimizerSpec,
    regularization: Regularization | Penalties,
    learning_rates: FloatArray,
    schedule: StepSchedule,
    total_steps: int,
    batch_size: int,
    seed: int,
    epoch: int,
    fit_intercept: bool = True,
    batch_range: tuple[int, int] | None = None,
    sample_weight: FloatArray | None = None,
    compiled: bool = True,
) -> tuple[FloatArray, FloatArray, OptimizerState, int]:
    """One shuffled pass of mini-batch updates over the block's rows, for all K models.

    Rows are visited in the order :func:`epoch_permutation` ``(n, seed, epoch)`` in
    ``ceil(n / batch_size)`` batches (the last one may be smaller). For each batch of
    ``B`` rows and each row ``k``:

    * gradient = mean over the batch: ``(1/B) sum_i s_i loss'(m_ik, y_i) * [x_i, 1]`` (``s_i``: the row's
      weight, normalized by the caller to mean 1 over the training rows, so this is an unbiased estimate of
      the weighted-mean objective's gradient; 1 without weights);
    * step ``t_k = opt_state.step[k] + 1``;
    * ``step_size_k = learning_rates[k] * multiplier(schedule, t_k, total_steps)``;
    * :func:`pipelines.sgd.optimizers.apply_update` with the regularization.

    The result is a deterministic function of the inputs (bit-for-bit).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    opt_state : OptimizerState
        State for the K rows; not modified (a copy is advanced and returned).
    loss : Loss or str
    optimizer : OptimizerSpec
    regularization : Regularization or Penalties
        One penalty for every row, or each row's own (a joint grid).
    learning_rates : ndarray of shape (K,)
    schedule : StepSchedule
    total_steps : int
        ``T`` passed to the schedule (the whole run's number of steps).
    batch_size : int
        ``>= 1``.
    seed, epoch : int
        Together they fix the row order.
    fit_intercept : bool
        If False the intercepts get zero gradients and are returned unchanged.
    batch_range : (start, stop), optional
        Run only batches ``start .. stop-1`` of this epoch's order (for synchronizing every few steps);
        default: all of them. Running the ranges of one epoch back to back equals one full call.
    sample_weight : ndarray of shape (n,), optional
        Per-row weights ``s_i`` (see above).
    compiled : bool
        Dense inputs and a one-margin loss run :func:`pipelines.sgd.fused.fused_epoch` (no Python per batch);
        False runs the numpy loop, the definition the compiled one is tested against (equal to ~1e-12: the
        sums' orders differ). Sparse inputs and multinomial models always run the numpy loop.

    Returns
    -------
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    opt_state : OptimizerState
        Advanced by ``steps_taken`` for every row.
    steps_taken : int
        ``ceil(n / batch_size)``.
    """
    loss_function = _resolve_loss(loss)
    _check_block(X, y, weights, intercepts)
    n_rows = X.shape[0]
    n_models = weights.shape[0]
    if learning_rates.shape != (n_models,):
        raise ValueError(
            f"learning_rates must have shape ({n_models},) to match weights, got {learning_rates.shape}"
        )
    if opt_state.n_rows != n_models:
        raise ValueError(f"opt_state has {opt_state.n_rows} rows, weights have {n_models}")
    state = opt_state.copy()
    n_batches_in_epoch = batches_per_epoch(n_rows, batch_size)
    first_batch, stop_batch = batch_range or (0, n_batches_in_epoch)
    stop_batch = min(stop_batch, n_batches_in_epoch)
    n_batches = max(0, stop_batch - first_batch)
    if n_batches == 0:
        return weights.copy(), intercepts.copy(), state, 0
    # Steps of every batch for every row: (n_batches, K), one schedule call per epoch.
    steps = state.step[np.newaxis, :] + 1 + np.arange(n_batches, dtype=np.int64)[:, np.newaxis]
    step_sizes_per_batch = learning_rates * np.asarray(multiplier(schedule, steps, total_steps))

    order = epoch_permutation(n_rows, seed, epoch)
    penalties = as_penalties(regularization, n_models)
    if compiled and isinstance(X, np.ndarray) and loss_function.outputs == 1:
        return _fused(X, y, sample_weight, order, first_batch, n_batches, batch_size, weights, intercepts, state,
                      step_sizes_per_batch, penalties, loss_function, optimizer, fit_intercept)
    zero_intercepts = np.zeros(n_models)
    # Plain SGD without a penalty leaves the weights of inputs absent from a batch untouched (their gradient is
    # 0): on a split design only the touched columns are updated, so a step costs in the batch's non-zeros
    # rather than the width, with the same bits as the full update.
    sparse_steps = isinstance(X, SplitDesign) and optimizer.name == "sgd" and penalties.is_zero
    if sparse_steps:
        weights = weights.copy()
    for batch_index in range(n_batches):
        # Gathering each batch with np.take measured faster than one X[order] per epoch.
        start = (first_batch + batch_index) * batch_size
        batch_rows = order[start : start + batch_size]
        X_batch = take_rows(X, batch_rows)
        y_batch = np.take(y, batch_rows)
        margins = compute_margins(X_batch, weights, intercepts)
        derivatives = loss_function.derivative(margins, y_batch)
        if sample_weight is not None:
            derivatives = derivatives * np.take(sample_weight, batch_rows)[:, np.newaxis]
        inverse_batch_rows = 1.0 / batch_rows.shape[0]
        # Column sums accumulate row after row: each model's sum is independent of K.
        grad_b = (
            np.add.reduce(derivatives, axis=0) * inverse_batch_rows if fit_intercept else zero_intercepts
        )
        if sparse_steps and isinstance(X_batch, SplitDesign):
            weights, intercepts = _sparse_sgd_step(X_batch, derivatives, inverse_batch_rows, grad_b, weights,
                                                   intercepts, state, step_sizes_per_batch[batch_index],
                                                   fit_intercept)
            continue
        grad_w = rowwise_gradient(derivatives, X_batch) * inverse_batch_rows
        new_weights, new_intercepts = apply_update(
            optimizer,
            state,
            weights,
            intercepts,
            grad_w,
            grad_b,
            step_sizes_per_batch[batch_index],
            penalties,
        )
        weights = new_weights
        if fit_intercept:
            intercepts = new_intercepts
    return weights.copy(), intercepts.copy(), state, n_batches


def _fused(X: FloatArray, y: FloatArray, sample_weight: FloatArray | None, order: np.ndarray, first_batch: int,
           n_batches: int, batch_size: int, weights: FloatArray, intercepts: FloatArray, state: OptimizerState,
           step_sizes: FloatArray, penalties: Penalties, loss: Loss, optimizer: OptimizerSpec,
           fit_intercept: bool) -> tuple[FloatArray, FloatArray, OptimizerState, int]:
    """:func:`minibatch_epoch`'s batches in :func:`pipelines.sgd.fused.fused_epoch` (imported here: numba is
    loaded by the processes that train only); ``state`` is the caller's copy and is advanced."""
    from pipelines.sgd.fused import LOSS_CODES, OPTIMIZER_CODES, fused_epoch

    names = SLOT_NAMES[optimizer.name]
    n_models, width = weights.shape
    weight_slots = np.stack([state.weight_slots[name] for name in names]) if names else np.zeros((0, n_models, width))
    intercept_slots = np.stack([state.intercept_slots[name] for name in names]) if names else np.zeros((0, n_models))
    new_weights, new_intercepts, steps = weights.copy(), intercepts.copy(), state.step.copy()
    fused_epoch(np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=np.float64),
                np.zeros(0) if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64),
                order, first_batch, n_batches, batch_size, new_weights, new_intercepts, weight_slots,
                intercept_slots, steps, np.ascontiguousarray(step_sizes, dtype=np.float64), penalties.l1,
                penalties.l2, LOSS_CODES[loss.name], float(getattr(loss, "epsilon", 0.0)),
                OPTIMIZER_CODES[optimizer.name], optimizer.momentum, optimizer.beta1, optimizer.beta2,
                optimizer.alpha, optimizer.resolved_eps, fit_intercept)
    state.step = steps
    for index, name in enumerate(names):
        state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
    return new_weights, new_intercepts, state, n_batches


def _sparse_sgd_step(X: SplitDesign, derivatives: FloatArray, inverse_rows: float, grad_b: FloatArray,
                     weights: FloatArray,
                     intercepts: FloatArray, state: OptimizerState, step_sizes: FloatArray,
                     fit_intercept: bool) -> tuple[FloatArray, FloatArray]:
    """``w <- w - step * g`` on the dense inputs and the batch's touched sparse inputs only (in place on
    ``weights``, which the caller owns); the same arithmetic, element by element, as :func:`apply_update` with
    ``sgd`` and no penalty, whose other columns would be ``w - step * 0 = w``."""
    state.step = state.step + 1
    split = X.dense_width
    step_column = step_sizes[:, np.newaxis]
    dense_gradient = rowwise_gradient(derivatives, X.dense) * inverse_rows
    weights[:, :split] = weights[:, :split] - step_column * dense_gradient
    touched, compact_indices = np.unique(X.sparse.indices, return_inverse=True)
    if touched.size:
        # the batch's columns renumbered 0..touched-1: built in O(non-zeros), each column's terms in row order as in
        # the full-width product
        compact = sp.csr_matrix((X.sparse.data, compact_indices.astype(np.int32), X.sparse.indptr),
                                shape=(X.sparse.shape[0], touched.size))
        columns = split + touched
        sparse_gradient_touched = sparse_gradient(derivatives, compact) * inverse_rows
        weights[:, columns] = weights[:, columns] - step_column * sparse_gradient_touched
    return weights, (intercepts - step_sizes * grad_b) if fit_intercept else intercepts


def _resolve_loss(loss: Loss | str) -> Loss:
    return get_loss(loss) if isinstance(loss, str) else loss


def _check_block(X: Design, y: FloatArray, weights: FloatArray, intercepts: FloatArray) -> None:
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
    if weights.ndim != 2 or weights.shape[1] != X.shape[1]:
        raise ValueError(f"weights must have shape (K, {X.shape[1]}) to match X, got {weights.shape}")
    if intercepts.shape != (weights.shape[0],):
        raise ValueError(
            f"intercepts must have shape ({weights.shape[0]},) to match weights, got {intercepts.shape}"
        )
