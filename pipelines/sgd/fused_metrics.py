"""The compiled (numba) validation pass of a binary loss on dense inputs and split designs: the sums of
:class:`~pipelines.sgd.metrics.MetricAccumulator` (its definition, in numpy, is
:meth:`~pipelines.sgd.metrics.MetricAccumulator.from_block`; the tests hold the two to each other) in one pass over
the rows, without the ``(n, K)`` arrays of margins, losses, probabilities and bins the numpy definition builds.

Chunk after chunk of :data:`~pipelines.sgd.fused.CHUNK` rows (read from memory once), per model row: the margins
(each a sequential sum in input order, then the intercept: :func:`~pipelines.sgd.fused.chunk_margins`; a split
design's sparse part then adds the sum over the row's non-zeros in storage order, as SciPy's product in the
definition does, computed for every model row at once, from the sparse weights held by column where the non-zeros
are many), then in one vectorized loop each row's loss (the loss's scalar rule), whether its margin is finite,
whether it is predicted right (``m > 0`` against ``y = 1``, a non-finite margin taken as 0) and its probability bin
(``sigmoid`` of the margin floored at -700, as :func:`~pipelines.sgd.losses.sigmoid`), then the sums over the
chunk's rows in row order (each model row's sums run over the chunks in order: the rows in order). The sums of a
model row are its own: a row's bits do not depend on the other rows evaluated with it, nor on the BLAS library (the
numpy definition's margins are BLAS dot products).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.sgd import elementary
from pipelines.sgd._types import FloatArray
from pipelines.sgd.compiling import by_column_buffer, compile_kernel, held_by_column, jitable, named_for
from pipelines.sgd.design import Design, SplitDesign
from pipelines.sgd.fused import CHUNK, chunk_margins
from pipelines.sgd.losses import ScalarLoss


@functools.cache
def binary_sums_kernel(value_at: Callable[..., Any]) -> Any:
    """The compiled validation sums of the binary loss whose scalar rule is ``value_at``:
    ``(loss_sum, nonfinite_count, correct_count, positive_histogram, negative_histogram)``, ``(K,)`` each and
    ``(K, n_bins)`` for the histograms; ``sample_weight`` empty: every row counts 1. ``X``: the dense inputs (a split
    design's dense part); ``indptr``, ``indices``, ``values``: a split design's CSR part, whose columns are the weight
    columns from ``X``'s width on (``indptr`` empty: no sparse part); ``by_column``: a
    :func:`~pipelines.sgd.compiling.by_column_buffer` of the sparse width to hold the sparse weights by column for
    the pass (a non-zero's weights of every model row in one cache line), or of no rows."""
    value = jitable(value_at)

    def binary_sums(X: FloatArray, indptr: Any, indices: Any, values: FloatArray, y: FloatArray,
                    sample_weight: FloatArray, weights: FloatArray, intercepts: FloatArray, epsilon: float,
                    n_bins: int, by_column: FloatArray) -> tuple[FloatArray, ...]:  # pragma: no cover - compiled
        n_rows, d = X.shape
        n_models = weights.shape[0]
        sparse = indptr.shape[0] > 0  # a split design's CSR part: weight columns d onwards
        by_column_weights = by_column.shape[0] > 0
        if by_column.shape[1] != n_models or (by_column_weights and (not sparse or
                                                                     by_column.shape[0] != weights.shape[1] - d)):
            raise ValueError("by_column: (the sparse width, the model rows) for a sparse part, or no rows")
        held_by_column(weights, d, by_column)
        weighted = sample_weight.shape[0] > 0
        loss_sum, nonfinite, correct = np.zeros(n_models), np.zeros(n_models), np.zeros(n_models)
        positive, negative = np.zeros((n_models, n_bins)), np.zeros((n_models, n_bins))
        margins, losses, hits, broken = np.empty(CHUNK), np.empty(CHUNK), np.empty(CHUNK), np.empty(CHUNK)
        sparse_sums = np.empty((CHUNK if sparse else 0, n_models))
        bins = np.empty(CHUNK, dtype=np.int64)
        for start in range(0, n_rows, CHUNK):  # the chunk's rows (in cache) for every model row in turn
            rows = min(CHUNK, n_rows - start)
            if sparse:  # every model row's sum over each row's non-zeros, in storage order
                for r in range(rows):
                    for k in range(n_models):
                        sparse_sums[r, k] = 0.0
                    for entry in range(indptr[start + r], indptr[start + r + 1]):
                        nonzero, column = values[entry], indices[entry]
                        if by_column_weights:
                            for k in range(n_models):
                                sparse_sums[r, k] += nonzero * by_column[column, k]
                        else:
                            for k in range(n_models):
                                sparse_sums[r, k] += nonzero * weights[k, d + column]
            for k in range(n_models):
                if d == 0:
                    margins[:rows] = intercepts[k]
                else:
                    chunk_margins(X, start, start + rows, weights[k], intercepts[k], margins)
                if sparse:
                    for r in range(rows):
                        margins[r] += sparse_sums[r, k]
                for r in range(rows):
                    margin, label = margins[r], y[start + r]
                    loss = value(margin, label, epsilon)
                    losses[r] = loss * sample_weight[start + r] if weighted else loss
                    finite = margin - margin == 0.0  # False for inf and NaN
                    broken[r] = 0.0 if finite else 1.0
                    shown = margin if finite else 0.0
                    hits[r] = 1.0 if (shown > 0.0) == (label == 1.0) else 0.0
                    probability = 1.0 / (1.0 + elementary.exp(-(shown if shown > -700.0 else -700.0)))
                    bins[r] = min(int(probability * n_bins), n_bins - 1)
                total, broken_total, right = loss_sum[k], nonfinite[k], correct[k]
                for r in range(rows):
                    row_weight = sample_weight[start + r] if weighted else 1.0
                    total += losses[r]
                    broken_total += broken[r]
                    right += hits[r] * row_weight if weighted else hits[r]
                    if y[start + r] == 1.0:
                        positive[k, bins[r]] += row_weight
                    else:
                        negative[k, bins[r]] += row_weight
                loss_sum[k], nonfinite[k], correct[k] = total, broken_total, right
        return loss_sum, nonfinite, correct, positive, negative

    return compile_kernel(named_for(binary_sums, value_at), (value_at, chunk_margins.py_func, held_by_column))


def binary_validation_sums(X: Design, y: FloatArray, weights: FloatArray, intercepts: FloatArray,
                           loss: ScalarLoss, n_bins: int, sample_weight: FloatArray | None) -> dict[str, FloatArray]:
    """:meth:`~pipelines.sgd.metrics.MetricAccumulator.from_block`'s sums of a binary loss on ``X``."""
    row_weights = np.zeros(0) if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float64)
    if isinstance(X, SplitDesign):
        dense, csr = X.dense, X.sparse
        indptr, indices, values = csr.indptr, csr.indices, np.ascontiguousarray(csr.data, dtype=np.float64)
    else:  # no sparse part
        dense, indptr, indices, values = X, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)
    # many non-zeros against the sparse width: the sparse weights held by column for the pass
    by_column = len(indptr) > 0 and 4 * int(indptr[-1]) >= weights.shape[1] - dense.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        loss_sum, nonfinite, correct, positive, negative = binary_sums_kernel(loss.value_at)(
            np.ascontiguousarray(dense), indptr, indices, values, np.ascontiguousarray(y, dtype=np.float64),
            row_weights,
            np.ascontiguousarray(weights, dtype=np.float64), np.ascontiguousarray(intercepts, dtype=np.float64),
            loss.epsilon, n_bins, by_column_buffer(weights, dense.shape[1], by_column))
    return {"loss_sum": loss_sum, "nonfinite_count": nonfinite, "correct_count": correct,
            "positive_histogram": positive, "negative_histogram": negative}
