"""Small synthetic data sets shared by the ``pipelines.sgd`` tests."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.sgd._types import FloatArray


def _standardized_features(rng: np.random.Generator, n_rows: int, n_features: int) -> FloatArray:
    X = rng.standard_normal((n_rows, n_features)) @ rng.uniform(0.5, 1.5, (n_features, n_features))
    standardized: FloatArray = (X - X.mean(axis=0)) / X.std(axis=0)
    return standardized


@pytest.fixture
def regression_data() -> tuple[FloatArray, FloatArray]:
    """(X (600, 5) standardized, y = X w + 0.7 + noise)."""
    rng = np.random.default_rng(20240501)
    X = _standardized_features(rng, 600, 5)
    y = X @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) + 0.7 + 0.3 * rng.standard_normal(600)
    return X, y


@pytest.fixture
def classification_data() -> tuple[FloatArray, FloatArray]:
    """(X (800, 4) standardized, y in {0, 1} from a noisy logistic model, not separable)."""
    rng = np.random.default_rng(20240502)
    X = _standardized_features(rng, 800, 4)
    margins = X @ np.array([1.2, -0.8, 0.4, 0.0]) - 0.3
    y = (rng.uniform(size=800) < 1.0 / (1.0 + np.exp(-margins))).astype(np.float64)
    return X, y
