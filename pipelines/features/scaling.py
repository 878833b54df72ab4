"""Standardization statistics, computed in one distributed pass and kept with the model.

The model is trained on ``z = (x - mean) / scale``. :meth:`FeatureScaling.to_raw` maps learned
coefficients back so the final model applies to raw features:
``w_raw = w / scale`` and ``b_raw = b - sum_j w_j * mean_j / scale_j``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from pipelines.errors import DataError
from pipelines.identifiers import map_in_arrow
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


def fit_scaling(dataframe: DataFrame, columns: Sequence[str], standardize: bool = True,
                where: str = "the training split",
                encode: Callable[[pa.RecordBatch], FloatArray] | None = None) -> FeatureScaling:
    """Means and population standard deviations of ``columns`` in one distributed pass.

    ``encode`` turns a batch of ``dataframe``'s rows into the ``(n, len(columns))`` inputs to describe (by
    default: ``columns`` are double columns of ``dataframe``).

    Every partition returns its count, means and sums of squared deviations (through Arrow); the driver
    merges them in partition order with Chan et al.'s pairwise update
    ``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n`` (numerically stable). Unlike a Spark aggregation, whose
    partial results merge in the order they arrive, the result is bit-for-bit reproducible, so a rerun or
    a retried job trains on identical features.

    A constant column (standard deviation 0) keeps scale 1: it is centred to zeros and carries no
    information, rather than dividing by zero.

    Raises
    ------
    DataError
        A column's statistics overflow float64 (values beyond about 1e154 in magnitude), named with ``where``.
    """
    if not standardize:
        return FeatureScaling.identity(columns)
    names = list(columns)

    def moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        count, mean, m2 = 0, np.zeros(len(names)), np.zeros(len(names))
        for batch in batches:
            if batch.num_rows == 0:
                continue
            X = encode(batch) if encode is not None else \
                np.column_stack([batch.column(name).to_numpy(zero_copy_only=False) for name in names])
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by the driver
                count, mean, m2 = _merge(count, mean, m2, X.shape[0], X.mean(axis=0),
                                         ((X - X.mean(axis=0)) ** 2).sum(axis=0))
        context = TaskContext.get()
        yield pa.RecordBatch.from_pydict({
            "partition": pa.array([context.partitionId() if context else 0], pa.int32()),
            "count": pa.array([count], pa.int64()),
            "mean": pa.array([mean.tobytes()], pa.binary()), "m2": pa.array([m2.tobytes()], pa.binary())})

    rows = map_in_arrow(dataframe, dataframe.columns if encode is not None else names, moments,
                        "partition INT, count LONG, mean BINARY, m2 BINARY").collect()
    count, mean, m2 = 0, np.zeros(len(names)), np.zeros(len(names))
    for row in sorted(rows, key=lambda r: int(r["partition"])):
        if row["count"]:
            with np.errstate(over="ignore", invalid="ignore"):
                count, mean, m2 = _merge(count, mean, m2, int(row["count"]), np.frombuffer(row["mean"]),
                                         np.frombuffer(row["m2"]))
    with np.errstate(over="ignore", invalid="ignore"):
        stds = np.sqrt(m2 / count) if count else np.zeros(len(names))
    overflowing = [name for name, mu, sd in zip(names, mean, stds, strict=True)
                   if not (np.isfinite(mu) and np.isfinite(sd))]
    if overflowing:
        raise DataError(f"{where}: column(s) {overflowing} have values too large to standardize (their "
                        "variance overflows float64); rescale them upstream, or set features.standardize=false")
    constant = stds <= 1e-12 * np.maximum(1.0, np.abs(mean))
    scales = np.where(constant, 1.0, stds)
    return FeatureScaling(tuple(names), mean, scales,
                          tuple(c for c, is_constant in zip(names, constant, strict=True) if is_constant))


def _merge(n_a: int, mean_a: FloatArray, m2_a: FloatArray, n_b: int, mean_b: FloatArray,
           m2_b: FloatArray) -> tuple[int, FloatArray, FloatArray]:
    """Combine (count, mean, M2) of two disjoint sets of rows."""
    if n_a == 0:
        return n_b, mean_b.copy(), m2_b.copy()
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)
