"""Per-block numerics the distributed layer runs on each partition: the kernel role and the epoch.

A :class:`Kernel` is one loss and one optimizer over one kind of block, chosen once from the problem
(:meth:`pipelines.sgd.problem.TrainingProblem.kernel`): the compiled kernels of dense inputs
(:class:`pipelines.sgd.fused.CompiledKernel`), split designs (:class:`pipelines.sgd.fused_sparse.CompiledSparseKernel`)
and multinomial models (:class:`pipelines.sgd.fused_multinomial.CompiledMultinomialKernel`), or the numpy kernels
(:mod:`pipelines.sgd.numpy_kernel`: multinomial models on split designs, and every compiled kernel's test oracle).
Two training modes share it:

* full-batch gradient descent: every partition returns :meth:`Kernel.gradient_sums`
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
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.design import Design, SplitDesign, sparse_gradient, sparse_margins_by_row
from pipelines.sgd.losses import Loss
from pipelines.sgd.optimizers import OptimizerSpec, OptimizerState
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule, multiplier

#: Above this many rows (whole blocks rather than mini-batches) products run chunk by chunk of this many
#: rows, one model row at a time. The path depends only on the number of data rows, never on K, so a
#: model row's bits do not depend on which other rows are computed with it.
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Block:
    """Rows of data: inputs ``X`` ``(n, d)`` (an array, float64 or float32, or a split design), labels ``y``
    ``(n,)`` and optional row weights ``sample_weight`` ``(n,)`` (None: every row weighs 1, and no multiply is
    done at all, so unweighted results keep their bits)."""

    X: Design
    y: FloatArray
    sample_weight: FloatArray | None = None


@dataclass(frozen=True)
class Models:
    """K model rows: ``weights`` ``(K, d)``, ``intercepts`` ``(K,)`` and their optimizer state; after an epoch
    whose plan asked for it (:attr:`EpochPlan.progressive_loss`), ``loss_sums``: each model's progressive training
    loss over the batches that produced these rows, shape ``(K / outputs,)`` (one per model, a multinomial
    model's C rows together)."""

    weights: FloatArray
    intercepts: FloatArray
    state: OptimizerState
    loss_sums: FloatArray | None = None


@dataclass(frozen=True)
class EpochPlan:
    """What a :func:`minibatch_epoch` call does besides its block and models.

    Attributes
    ----------
    kernel : Kernel
        The loss and optimizer, chosen for the block's kind.
    learning_rates : ndarray of shape (K,)
    penalties : Penalties
        Each row's penalty (one for all, or a joint grid's).
    schedule : StepSchedule
    total_steps : int
        ``T`` passed to the schedule (the whole run's number of steps).
    batch_size : int
        ``>= 1``.
    seed, epoch : int
        Together they fix the row order (:func:`epoch_permutation`).
    fit_intercept : bool
        If False the intercepts get zero gradients and are returned unchanged.
    batch_range : (start, stop), optional
        Run only batches ``start .. stop-1`` of this epoch's order (for synchronizing every few steps); None: all
        of them. Running the ranges of one epoch back to back equals one full call.
    progressive_loss : bool
        Also sum each model's loss at the margins each batch's update is computed from (Keras', Lightning's
        and Vowpal Wabbit's progressive training loss; no extra pass over the rows): per batch
        ``sum_i s_i loss(m_ik, y_i)``, the rows in batch order, the batches' totals added in batch order, into
        ``Models.loss_sums``. The updates are the same bits either way.
    """

    kernel: Kernel
    learning_rates: FloatArray
    penalties: Penalties
    schedule: StepSchedule
    total_steps: int
    batch_size: int
    seed: int
    epoch: int
    fit_intercept: bool = True
    batch_range: tuple[int, int] | None = None
    progressive_loss: bool = False


@dataclass(frozen=True)
class EpochSteps:
    """The batches of one call, as :func:`minibatch_epoch` lays them out for the kernel: the epoch's row
    ``order`` ``(n,)``, batches ``first_batch .. first_batch + n_batches - 1`` of it, and each batch's step sizes
    ``(n_batches, K)``."""

    order: IntArray
    first_batch: int
    n_batches: int
    step_sizes: FloatArray


class Kernel(Protocol):
    """One loss and one optimizer over one kind of block (MLlib's ``Gradient`` and the epoch loop around its
    ``Updater``). Every sum runs over the data rows in a fixed order, per model row."""

    @property
    def loss(self) -> Loss:
        """The loss whose sums and derivatives the kernel computes."""
        ...

    @property
    def optimizer(self) -> OptimizerSpec:
        """The optimizer of :meth:`run_batches`."""
        ...

    def loss_sums(self, block: Block, weights: FloatArray, intercepts: FloatArray) -> FloatArray:
        """``sum_i s_i loss(x_i . w_k + b_k, y_i)`` per model row, shape ``(K,)`` (no penalty)."""
        ...

    def gradient_sums(self, block: Block, weights: FloatArray,
                      intercepts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Gradient and loss *sums* over the block's rows, for all K models (no penalty).

        Returns
        -------
        grad_w_sum : ndarray of shape (K, d)
            ``sum_i s_i loss'(m_ik, y_i) * x_i``.
        grad_b_sum : ndarray of shape (K,)
            ``sum_i s_i loss'(m_ik, y_i)``.
        loss_sum : ndarray of shape (K,)
            ``sum_i s_i loss(m_ik, y_i)``.
        """
        ...

    def run_batches(self, block: Block, models: Models, plan: EpochPlan, steps: EpochSteps) -> Models:
        """The batches of ``steps``; ``models.state`` is the caller's copy, advanced in place."""
        ...


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


def minibatch_epoch(block: Block, models: Models, plan: EpochPlan) -> tuple[Models, int]:
    """One shuffled pass of mini-batch updates over the block's rows, for all K models.

    Rows are visited in the order :func:`epoch_permutation` ``(n, seed, epoch)`` in
    ``ceil(n / batch_size)`` batches (the last one may be smaller). For each batch of
    ``B`` rows and each row ``k``:

    * gradient = mean over the batch: ``(1/B) sum_i s_i loss'(m_ik, y_i) * [x_i, 1]`` (``s_i``: the row's
      weight, normalized by the caller to mean 1 over the training rows, so this is an unbiased estimate of
      the weighted-mean objective's gradient; 1 without weights);
    * step ``t_k = state.step[k] + 1``;
    * ``step_size_k = learning_rates[k] * multiplier(schedule, t_k, total_steps)``;
    * the optimizer's update (:func:`pipelines.sgd.optimizers.apply_update`) with the row's penalty;
    * with ``plan.progressive_loss``, the batch's ``sum_i s_i loss(m_ik, y_i)`` at the margins of the update,
      added to the model's ``loss_sums``.

    The plan's kernel runs the batches. The result is a deterministic function of the inputs (bit-for-bit).

    Parameters
    ----------
    block : Block
        ``X`` ``(n, d)``, ``y`` ``(n,)``, optional row weights.
    models : Models
        The K rows' start; not modified (a copy of the state is advanced and returned).
    plan : EpochPlan

    Returns
    -------
    models : Models
        The rows after the batches, their state advanced by ``steps_taken`` for every row.
    steps_taken : int
        The batches run: ``ceil(n / batch_size)`` for a whole epoch.
    """
    weights, intercepts = models.weights, models.intercepts
    _check_block(block.X, block.y, weights, intercepts)
    n_models = weights.shape[0]
    if plan.learning_rates.shape != (n_models,):
        raise ValueError(
            f"learning_rates must have shape ({n_models},) to match weights, got {plan.learning_rates.shape}"
        )
    if models.state.n_rows != n_models:
        raise ValueError(f"opt_state has {models.state.n_rows} rows, weights have {n_models}")
    if plan.penalties.n_rows != n_models:
        raise ValueError(f"penalties have {plan.penalties.n_rows} rows, the models {n_models}")
    state = models.state.copy()
    n_rows = block.X.shape[0]
    n_batches_in_epoch = batches_per_epoch(n_rows, plan.batch_size)
    first_batch, stop_batch = plan.batch_range or (0, n_batches_in_epoch)
    n_batches = max(0, min(stop_batch, n_batches_in_epoch) - first_batch)
    if n_batches == 0:
        no_loss = np.zeros(n_models // plan.kernel.loss.outputs) if plan.progressive_loss else None
        return Models(weights.copy(), intercepts.copy(), state, no_loss), 0
    # Steps of every batch for every row: (n_batches, K), one schedule call per epoch.
    steps = state.step[np.newaxis, :] + 1 + np.arange(n_batches, dtype=np.int64)[:, np.newaxis]
    step_sizes = plan.learning_rates * np.asarray(multiplier(plan.schedule, steps, plan.total_steps))
    batches = EpochSteps(epoch_permutation(n_rows, plan.seed, plan.epoch), first_batch, n_batches, step_sizes)
    return plan.kernel.run_batches(block, Models(weights, intercepts, state), plan, batches), n_batches


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
