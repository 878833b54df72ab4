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

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd.losses import Loss, get_loss
from pipelines.sgd.optimizers import OptimizerSpec, OptimizerState, apply_update
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import StepSchedule, multiplier

#: Above this many rows (whole blocks rather than mini-batches) products run chunk by chunk of this many
#: rows, one model row at a time. The path depends only on the number of data rows, never on K, so a
#: model row's bits do not depend on which other rows are computed with it.
_CHUNK_ROWS = 4096


def compute_margins(X: FloatArray, weights: FloatArray, intercepts: FloatArray) -> FloatArray:
    """Margins ``m_ik = x_i . w_k + b_k``.

    Computed as K independent products (a stacked ``matmul`` of ``(1, d) @ (d, n)`` items), not one
    ``(n, d) @ (d, K)`` GEMM: a GEMM's blocking, and so its rounding, depends on K, and a model row must
    get bit-identical results whichever other rows (rates) it is trained with.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)

    Returns
    -------
    ndarray of shape (n, K)
        A transposed view of a C-contiguous ``(K, n)`` array.
    """
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


def rowwise_gradient(derivatives: FloatArray, X: FloatArray) -> FloatArray:
    """``sum_i derivatives[i, k] * x_i`` for every row k, shape ``(K, d)``.

    K independent ``(1, n) @ (n, d)`` products, so a row's result does not depend on K (see
    :func:`compute_margins`).
    """
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
    X: FloatArray,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    loss: Loss | str,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradient and loss *sums* over the rows of one block, for all K models.

    ``grad_w_sum[k] = sum_i loss'(m_ik, y_i) * x_i``,
    ``grad_b_sum[k] = sum_i loss'(m_ik, y_i)``,
    ``loss_sum[k] = sum_i loss(m_ik, y_i)``; no penalty is included.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    loss : Loss or str

    Returns
    -------
    grad_w_sum : ndarray of shape (K, d)
    grad_b_sum : ndarray of shape (K,)
    loss_sum : ndarray of shape (K,)
    """
    loss_function = _resolve_loss(loss)
    margins = compute_margins(X, weights, intercepts)
    derivatives = loss_function.derivative(margins, y)
    grad_w_sum = rowwise_gradient(derivatives, X)
    grad_b_sum: FloatArray = np.add.reduce(derivatives, axis=0)
    loss_sum: FloatArray = loss_function.value(margins, y).sum(axis=0)
    return grad_w_sum, grad_b_sum, loss_sum


def loss_sums(
    X: FloatArray,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    loss: Loss | str,
) -> FloatArray:
    """``sum_i loss(x_i . w_k + b_k, y_i)`` per model row, shape ``(K,)`` (no penalty)."""
    loss_function = _resolve_loss(loss)
    result: FloatArray = loss_function.value(compute_margins(X, weights, intercepts), y).sum(axis=0)
    return result


def batches_per_epoch(n_rows: int, batch_size: int) -> int:
    """Mini-batches in one pass over ``n_rows`` rows: ``ceil(n_rows / batch_size)`` (the last may be smaller).

    The one definition of an epoch's step count: the kernels, the engine's strategies and the reference
    trainer all use it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return -(-n_rows // batch_size)


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of one epoch: ``np.random.default_rng([seed, epoch]).permutation(n_rows)``.

    Deterministic in ``(seed, epoch, n_rows)``; independent of K, so a model row sees
    the same batches whichever other rows it is trained with.
    """
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def minibatch_epoch(
    X: FloatArray,
    y: FloatArray,
    weights: FloatArray,
    intercepts: FloatArray,
    opt_state: OptimizerState,
    *,
    loss: Loss | str,
    optimizer: OptimizerSpec,
    regularization: Regularization,
    learning_rates: FloatArray,
    schedule: StepSchedule,
    total_steps: int,
    batch_size: int,
    seed: int,
    epoch: int,
    fit_intercept: bool = True,
    batch_range: tuple[int, int] | None = None,
) -> tuple[FloatArray, FloatArray, OptimizerState, int]:
    """One shuffled pass of mini-batch updates over the block's rows, for all K models.

    Rows are visited in the order :func:`epoch_permutation` ``(n, seed, epoch)`` in
    ``ceil(n / batch_size)`` batches (the last one may be smaller). For each batch of
    ``B`` rows and each row ``k``:

    * gradient = mean over the batch: ``(1/B) sum_i loss'(m_ik, y_i) * [x_i, 1]``;
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
    regularization : Regularization
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
    zero_intercepts = np.zeros(n_models)
    for batch_index in range(n_batches):
        # Gathering each batch with np.take measured faster than one X[order] per epoch.
        start = (first_batch + batch_index) * batch_size
        batch_rows = order[start : start + batch_size]
        X_batch = np.take(X, batch_rows, axis=0)
        y_batch = np.take(y, batch_rows)
        margins = compute_margins(X_batch, weights, intercepts)
        derivatives = loss_function.derivative(margins, y_batch)
        inverse_batch_rows = 1.0 / batch_rows.shape[0]
        grad_w = rowwise_gradient(derivatives, X_batch) * inverse_batch_rows
        # Column sums accumulate row after row: each model's sum is independent of K.
        grad_b = (
            np.add.reduce(derivatives, axis=0) * inverse_batch_rows if fit_intercept else zero_intercepts
        )
        new_weights, new_intercepts = apply_update(
            optimizer,
            state,
            weights,
            intercepts,
            grad_w,
            grad_b,
            step_sizes_per_batch[batch_index],
            regularization,
        )
        weights = new_weights
        if fit_intercept:
            intercepts = new_intercepts
    return weights.copy(), intercepts.copy(), state, n_batches


def _resolve_loss(loss: Loss | str) -> Loss:
    return get_loss(loss) if isinstance(loss, str) else loss


def _check_block(X: FloatArray, y: FloatArray, weights: FloatArray, intercepts: FloatArray) -> None:
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
