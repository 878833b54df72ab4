"""Array type aliases shared by the ``pipelines.sgd`` modules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
"""A float64 ndarray; shapes are given in each docstring."""

IntArray = npt.NDArray[np.int64]
"""An int64 ndarray; shapes are given in each docstring."""
