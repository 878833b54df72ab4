"""Standardization statistics, computed in one distributed pass and kept with the model.

The model is trained on ``z = (x - mean) / scale``. :meth:`FeatureScaling.to_raw` maps learned
coefficients back so the final model applies to raw features:
``w_raw = w / scale`` and ``b_raw = b - sum_j w_j * mean_j / scale_j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.sgd._types import FloatArray


@dataclass(frozen=True)
class FeatureScaling:
    """Per-feature ``means`` and ``scales`` (shape ``(d,)``); identity when not standardizing."""

    columns: tuple[str, ...]
    means: FloatArray
    scales: FloatArray
    constant_columns: tuple[str, ...] = ()

    @classmethod
    def identity(cls, columns: Sequence[str]) -> FeatureScaling:
        d = len(columns)
        return cls(tuple(columns), np.zeros(d), np.ones(d))

    def transform(self, X: FloatArray) -> FloatArray:
        """``(X - means) / scales`` for ``X`` of shape ``(n, d)``."""
        result: FloatArray = (X - self.means) / self.scales
        return result

    def to_raw(self, weights: FloatArray, intercepts: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Coefficients for raw features from coefficients learned on standardized ones.

        ``weights`` ``(K, d)``, ``intercepts`` ``(K,)`` -> the same shapes.
        """
        raw_weights: FloatArray = weights / self.scales
        raw_intercepts: FloatArray = intercepts - raw_weights @ self.means
        return raw_weights, raw_intercepts


def fit_scaling(dataframe: DataFrame, columns: Sequence[str], standardize: bool = True) -> FeatureScaling:
    """Means and population standard deviations of ``columns`` in one aggregation.

    A constant column (standard deviation 0) keeps scale 1: it is centred to zeros and carries no
    information, rather than dividing by zero.
    """
    if not standardize:
        return FeatureScaling.identity(columns)
    aggregates = [F.mean(c).alias(f"mean::{c}") for c in columns]
    aggregates += [F.stddev_pop(c).alias(f"std::{c}") for c in columns]
    row = dataframe.agg(*aggregates).collect()[0].asDict()
    means = np.array([float(row[f"mean::{c}"] or 0.0) for c in columns])
    stds = np.array([float(row[f"std::{c}"] or 0.0) for c in columns])
    constant = stds <= 1e-12 * np.maximum(1.0, np.abs(means))
    scales = np.where(constant, 1.0, stds)
    return FeatureScaling(tuple(columns), means, scales,
                          tuple(c for c, is_constant in zip(columns, constant, strict=True) if is_constant))
