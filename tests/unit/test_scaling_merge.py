"""The pairwise (count, mean, M2) merge behind fit_scaling equals numpy on the whole data."""

from __future__ import annotations

import numpy as np

from pipelines.features.scaling import FeatureScaling, _merge


def test_pairwise_merge_matches_numpy_moments() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 4)) * [1.0, 1e3, 1e-3, 0.0] + [0.0, 5e6, 1.0, 7.0]
    count, mean, m2 = 0, np.zeros(4), np.zeros(4)
    for chunk in np.array_split(X, 7):
        count, mean, m2 = _merge(count, mean, m2, chunk.shape[0], chunk.mean(axis=0),
                                 ((chunk - chunk.mean(axis=0)) ** 2).sum(axis=0))
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(m2 / count), X.std(axis=0), rtol=1e-9, atol=1e-12)


def test_to_raw_maps_standardized_coefficients_back() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 3)) * [2.0, 10.0, 0.5] + [1.0, -3.0, 8.0]
    scaling = FeatureScaling(("a", "b", "c"), X.mean(axis=0), X.std(axis=0))
    weights, intercepts = rng.normal(size=(2, 3)), rng.normal(size=2)
    raw_weights, raw_intercepts = scaling.to_raw(weights, intercepts)
    np.testing.assert_allclose(X @ raw_weights.T + raw_intercepts,
                               scaling.transform(X) @ weights.T + intercepts, rtol=1e-12)
