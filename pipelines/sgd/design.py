"""Design matrices with a sparse part: ``[dense | sparse]`` rows kept apart so the sparse part stays sparse.

The kernels take either a plain ``(n, d)`` array or a :class:`SplitDesign` (dense ``(n, d_dense)`` and CSR
``(n, d_sparse)``); model rows are ``(K, d_dense + d_sparse)`` either way. Sparse products cost in the
non-zeros: ``margins = X_dense w_dense + X_sparse w_sparse`` and ``gradient_sparse = X_sparse^T r``. SciPy's
CSR kernels add each output's terms in storage order, one output column at a time, so a model row's bits do
not depend on which other rows share the product (the grid-independence the dense kernels keep too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.sgd._types import FloatArray


@dataclass(frozen=True)
class SplitDesign:
    """``n`` rows as a dense block and a CSR block side by side."""

    dense: FloatArray  # (n, d_dense)
    sparse: sp.csr_matrix  # (n, d_sparse)

    @property
    def shape(self) -> tuple[int, int]:
        return self.dense.shape[0], self.dense.shape[1] + self.sparse.shape[1]

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dense_width(self) -> int:
        return int(self.dense.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.sparse.nnz)

    def __getitem__(self, rows: Any) -> SplitDesign:
        """Rows by index array or boolean mask (both parts alike)."""
        return SplitDesign(np.ascontiguousarray(self.dense[rows]), self.sparse[rows])

    def toarray(self) -> FloatArray:
        """The full dense ``(n, d)`` matrix (tests and small data only)."""
        return np.hstack([self.dense, self.sparse.toarray()])


#: What the kernels accept as rows.
Design = FloatArray | SplitDesign


def take_rows(X: Design, rows: np.ndarray) -> Design:
    """``X[rows]`` for either kind (``np.take`` for arrays: measured faster than fancy indexing)."""
    if isinstance(X, SplitDesign):
        return X[rows]
    taken: FloatArray = np.take(X, rows, axis=0)
    return taken


def sparse_margins_by_row(X: sp.csr_matrix, weights: FloatArray) -> FloatArray:
    """``X @ weights[k]`` for every model row, shape ``(K, n)`` (C-contiguous); one CSR product per row, so
    grid-independent."""
    result = np.empty((weights.shape[0], X.shape[0]))
    for k in range(weights.shape[0]):
        result[k] = X @ weights[k]
    return result


def sparse_gradient(derivatives: FloatArray, X: sp.csr_matrix) -> FloatArray:
    """``X^T derivatives[:, k]`` for every model row, shape ``(K, d_sparse)``."""
    transposed = X.T.tocsr()
    gradient = np.empty((derivatives.shape[1], X.shape[1]))
    for k in range(derivatives.shape[1]):
        gradient[k] = transposed @ np.ascontiguousarray(derivatives[:, k])
    return gradient
