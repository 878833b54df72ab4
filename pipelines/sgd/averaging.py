"""Model averaging across partitions, in a fixed order and elementwise.

``mean = sum_p (n_p / N) * a_p`` accumulated partition after partition: every element's result depends
only on that element's inputs (not on K or d, unlike a BLAS reduction whose blocking varies with shape),
so a model row averages to bit-identical values whichever other rows are trained with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray


def weighted_mean(arrays: Sequence[npt.NDArray[np.generic]], weights: Sequence[float]) -> FloatArray:
    """``sum_p weights[p] * arrays[p] / sum(weights)`` over same-shaped arrays, in the given order.

    Raises
    ------
    ValueError
        No arrays, a length mismatch, differing shapes, or weights that are negative or sum to zero.
    """
    if not arrays:
        raise ValueError("weighted_mean needs at least one array, got 0")
    if len(arrays) != len(weights):
        raise ValueError(f"weighted_mean needs one weight per array, got {len(weights)} for {len(arrays)}")
    weight_array = np.asarray(weights, dtype=np.float64)
    if np.any(weight_array < 0) or not weight_array.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    shape = arrays[0].shape
    if any(array.shape != shape for array in arrays):
        raise ValueError(f"weighted_mean needs arrays of one shape, got {[a.shape for a in arrays]}")
    fractions = weight_array / weight_array.sum()
    total: FloatArray = np.zeros(shape, dtype=np.float64)
    for fraction, array in zip(fractions, arrays, strict=True):
        total += fraction * array.astype(np.float64, copy=False)
    return total
