"""Evaluation metrics as mergeable sums, so that partitions can be evaluated apart.

Each partition builds a :class:`MetricAccumulator` from its block with
:meth:`MetricAccumulator.from_block`; accumulators add up with
:meth:`~MetricAccumulator.merge` (any order gives the same sums up to rounding) and
:meth:`~MetricAccumulator.compute` turns the total into metrics per model row.

Sums kept, per model row ``k`` (``r_ik = m_ik - y_i`` the residual, ``p_ik = sigmoid(m_ik)``):

* always: ``count = n`` and ``loss_sum = sum_i loss(m_ik, y_i)``;
* squared: ``sum r^2``, ``sum |r|``, ``sum y``, ``sum y^2``;
* logistic: the number of correct predictions (predict 1 when ``m > 0``, i.e.
  ``p > 0.5``) and histograms of ``p`` over ``n_bins`` equal-width bins of ``[0, 1]``,
  one for positive and one for negative labels.

Metrics returned by :meth:`~MetricAccumulator.compute`:

* ``loss`` = ``loss_sum / n`` (mean data loss, no penalty), ``count`` = ``n``;
* squared: ``rmse = sqrt(sum r^2 / n)``, ``mae = sum |r| / n``,
  ``r2 = 1 - SSE / SST`` with ``SST = sum y^2 - (sum y)^2 / n`` (NaN when ``SST = 0``;
  the one-pass SST loses precision when ``|mean y|`` dwarfs the spread of ``y``);
* logistic: ``accuracy``, and ``auc``: the area under the ROC curve through the
  histogram bin edges, by the trapezoid rule. Scores in the same bin count as ties,
  so the value is exact for scores quantized to the bins and approximate otherwise
  (error at most the share of positive/negative pairs that share a bin); like Spark's
  ``BinaryClassificationMetrics(numBins)``.

A model row whose margins are not all finite (a diverging rate) gets NaN for every metric: it never
crashes the evaluation, and no meaningless AUC or accuracy is reported for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import Design
from pipelines.sgd.kernels import compute_margins
from pipelines.sgd.losses import get_loss, sigmoid

DEFAULT_AUC_BINS = 2048
"""Histogram bins of predicted probability used for the AUC."""

VALIDATION_METRICS: dict[str, tuple[str, ...]] = {
    "logistic": ("loss", "accuracy", "auc"),
    "squared": ("loss", "rmse", "mae", "r2"),
}
"""The registry of metric names: what :meth:`MetricAccumulator.compute` reports per loss and every curve,
column and MLflow metric is named after (``val_<name>``; ``loss`` is the mean log-loss for logistic)."""

MAIN_METRIC: dict[str, str] = {"logistic": "val_auc", "squared": "val_rmse"}
"""The curve a person looks at first, per loss."""


def curve_names(loss: str) -> tuple[str, ...]:
    """Per-epoch curves of a sweep with ``loss``: ``train_loss`` then ``val_<metric>`` for each metric."""
    return ("train_loss", *(f"val_{name}" for name in VALIDATION_METRICS[loss]))


ALL_CURVES: tuple[str, ...] = tuple(dict.fromkeys(name for loss in VALIDATION_METRICS for name in curve_names(loss)))
"""Every curve name of every loss (the results table has a column for each)."""


@dataclass(frozen=True)
class MetricAccumulator:
    """Additive sufficient statistics of the metrics of K models.

    Attributes
    ----------
    loss_name : {"squared", "logistic"}
    count : int
        Rows seen.
    sums : dict of str to ndarray
        Named sums; shapes ``(K,)``, ``()`` for label sums, ``(K, n_bins)`` for histograms.
    """

    loss_name: str
    count: int
    sums: dict[str, FloatArray]

    @classmethod
    def from_block(
        cls,
        X: Design,
        y: FloatArray,
        weights: FloatArray,
        intercepts: FloatArray,
        loss_name: str,
        n_bins: int = DEFAULT_AUC_BINS,
        sample_weight: FloatArray | None = None,
    ) -> MetricAccumulator:
        """Sums over one block of rows (weighted by ``sample_weight`` when given: every sum, the AUC
        histograms included, and a ``weight_sum`` that :meth:`compute` divides by instead of the count).

        Parameters
        ----------
        X : ndarray of shape (n, d)
        y : ndarray of shape (n,)
        weights : ndarray of shape (K, d)
        intercepts : ndarray of shape (K,)
        loss_name : {"squared", "logistic"}
        n_bins : int
            Probability histogram bins for the AUC (logistic only), ``>= 1``.
        sample_weight : ndarray of shape (n,), optional
        """
        loss = get_loss(loss_name)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
        with np.errstate(over="ignore", invalid="ignore"):
            margins = compute_margins(X, weights, intercepts)
            finite = np.isfinite(margins)
            values = loss.value(margins, y)
            sums: dict[str, FloatArray] = {
                "loss_sum": (values if sample_weight is None else values * sample_weight[:, np.newaxis]).sum(axis=0),
                "nonfinite_count": (~finite).sum(axis=0, dtype=np.float64)}
        margins = np.where(finite, margins, 0.0)
        if sample_weight is not None:
            sums["weight_sum"] = np.asarray(float(np.add.reduce(sample_weight)))
        weight_column = np.ones((1, 1)) if sample_weight is None else sample_weight[:, np.newaxis]
        if loss_name == "squared":
            residuals = margins - y[:, np.newaxis]
            if sample_weight is None:
                sums["squared_error_sum"] = np.einsum("ik,ik->k", residuals, residuals)
                sums["absolute_error_sum"] = np.abs(residuals).sum(axis=0)
                sums["label_sum"] = np.asarray(y.sum())
                sums["label_squared_sum"] = np.asarray(y @ y)
            else:
                sums["squared_error_sum"] = np.einsum("ik,ik->k", residuals * weight_column, residuals)
                sums["absolute_error_sum"] = (np.abs(residuals) * weight_column).sum(axis=0)
                sums["label_sum"] = np.asarray(y @ sample_weight)
                sums["label_squared_sum"] = np.asarray((y * y) @ sample_weight)
        else:
            is_positive = y == 1.0
            correct = (margins > 0.0) == is_positive[:, np.newaxis]
            sums["correct_count"] = correct.sum(axis=0, dtype=np.float64) if sample_weight is None else \
                (correct * weight_column).sum(axis=0)
            positive, negative = _probability_histograms(sigmoid(margins), is_positive, n_bins, sample_weight)
            sums["positive_histogram"] = positive
            sums["negative_histogram"] = negative
        return cls(loss_name, int(X.shape[0]), sums)

    @classmethod
    def empty(cls, loss_name: str, n_models: int, n_bins: int = DEFAULT_AUC_BINS) -> MetricAccumulator:
        """The zero accumulator (identity of :meth:`merge`) for ``n_models`` rows."""
        get_loss(loss_name)
        zeros = np.zeros(n_models)
        sums: dict[str, FloatArray] = {"loss_sum": zeros, "nonfinite_count": zeros}
        if loss_name == "squared":
            sums.update(
                squared_error_sum=zeros,
                absolute_error_sum=zeros,
                label_sum=np.asarray(0.0),
                label_squared_sum=np.asarray(0.0),
            )
        else:
            histogram = np.zeros((n_models, n_bins))
            sums.update(correct_count=zeros, positive_histogram=histogram, negative_histogram=histogram)
        return cls(loss_name, 0, sums)

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Sum of two accumulators (neither is modified).

        Raises
        ------
        ValueError
            If the loss names, sum names or shapes differ.
        """
        if other.loss_name != self.loss_name:
            raise ValueError(f"cannot merge {self.loss_name!r} metrics with {other.loss_name!r}")
        if other.sums.keys() != self.sums.keys() or any(
            other.sums[key].shape != value.shape for key, value in self.sums.items()
        ):
            raise ValueError("cannot merge metric accumulators with different sums or shapes")
        merged = {key: value + other.sums[key] for key, value in self.sums.items()}
        return MetricAccumulator(self.loss_name, self.count + other.count, merged)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat ``{name: array}`` form for shipping; ``"count"`` holds the row count."""
        arrays: dict[str, npt.NDArray[np.generic]] = {"count": np.asarray(self.count, dtype=np.int64)}
        arrays.update(self.sums)
        return arrays

    @classmethod
    def from_arrays(cls, loss_name: str, arrays: dict[str, npt.NDArray[np.generic]]) -> MetricAccumulator:
        """Inverse of :meth:`to_arrays`."""
        get_loss(loss_name)
        if "count" not in arrays:
            raise ValueError(f"metric arrays need a 'count' key, got {sorted(arrays)}")
        sums = {key: np.asarray(value, dtype=np.float64) for key, value in arrays.items() if key != "count"}
        return cls(loss_name, int(arrays["count"]), sums)

    def compute(self) -> dict[str, FloatArray]:
        """Metrics per model row, each an ndarray of shape (K,).

        Returns
        -------
        dict
            ``"count"`` and the :data:`VALIDATION_METRICS` of the loss. All NaN when ``count == 0``, and
            NaN for a row with any non-finite margin.
        """
        loss_sum = self.sums["loss_sum"]
        count = float(self.sums["weight_sum"]) if "weight_sum" in self.sums else float(self.count)
        with np.errstate(divide="ignore", invalid="ignore"):
            metrics: dict[str, FloatArray] = {
                "loss": loss_sum / count if count else np.full_like(loss_sum, np.nan),
                "count": np.full_like(loss_sum, float(self.count)),
            }
            if self.loss_name == "squared":
                metrics.update(self._regression_metrics(count))
            else:
                metrics.update(self._classification_metrics(count))
        broken = self.sums["nonfinite_count"] > 0
        if broken.any():
            for name in VALIDATION_METRICS[self.loss_name]:
                metrics[name] = np.where(broken, np.nan, metrics[name])
        return metrics

    def _regression_metrics(self, count: float) -> dict[str, FloatArray]:
        squared_error_sum = self.sums["squared_error_sum"]
        if not count:
            nan = np.full_like(squared_error_sum, np.nan)
            return {"rmse": nan, "mae": nan.copy(), "r2": nan.copy()}
        label_sum = float(self.sums["label_sum"])
        total_sum_of_squares = float(self.sums["label_squared_sum"]) - label_sum * label_sum / count
        r2 = (
            1.0 - squared_error_sum / total_sum_of_squares
            if total_sum_of_squares > 0
            else np.full_like(squared_error_sum, np.nan)
        )
        return {
            "rmse": np.sqrt(squared_error_sum / count),
            "mae": self.sums["absolute_error_sum"] / count,
            "r2": r2,
        }

    def _classification_metrics(self, count: float) -> dict[str, FloatArray]:
        correct_count = self.sums["correct_count"]
        accuracy = correct_count / count if count else np.full_like(correct_count, np.nan)
        return {
            "accuracy": accuracy,
            "auc": histogram_auc(self.sums["positive_histogram"], self.sums["negative_histogram"]),
        }


def _probability_histograms(
    probabilities: FloatArray, is_positive: npt.NDArray[np.bool_], n_bins: int,
    sample_weight: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Per-row counts (weight sums with ``sample_weight``) of ``probabilities`` (n, K) in ``n_bins`` bins, split
    by label.

    Bin ``j`` holds ``j / n_bins <= p < (j + 1) / n_bins``; ``p = 1`` goes to the last bin.
    Returns two ``(K, n_bins)`` float64 arrays (positives, negatives).
    """
    n_models = probabilities.shape[1]
    bins = np.minimum((probabilities * n_bins).astype(np.int64), n_bins - 1)
    flat_bins = bins + np.arange(n_models, dtype=np.int64) * n_bins  # (n, K) into K * n_bins
    size = n_models * n_bins
    weights = None if sample_weight is None else np.broadcast_to(sample_weight[:, np.newaxis], flat_bins.shape)
    positive = np.bincount(flat_bins[is_positive].ravel(), minlength=size,
                           weights=None if weights is None else weights[is_positive].ravel())
    negative = np.bincount(flat_bins[~is_positive].ravel(), minlength=size,
                           weights=None if weights is None else weights[~is_positive].ravel())
    return (
        positive.reshape(n_models, n_bins).astype(np.float64),
        negative.reshape(n_models, n_bins).astype(np.float64),
    )


def histogram_auc(positive_histogram: FloatArray, negative_histogram: FloatArray) -> FloatArray:
    """ROC AUC per row from score histograms, by the trapezoid rule.

    Sweeping the threshold down through the bin edges gives the ROC points
    ``(FPR_j, TPR_j) = (sum_{i >= j} neg_i / N, sum_{i >= j} pos_i / P)``, starting at
    ``(0, 0)``; ``AUC = sum_j (FPR_j - FPR_{j+1}) * (TPR_j + TPR_{j+1}) / 2``.

    Parameters
    ----------
    positive_histogram, negative_histogram : ndarray of shape (K, n_bins)
        Counts per score bin, bins in increasing score order.

    Returns
    -------
    ndarray of shape (K,)
        NaN for rows with no positive or no negative labels.
    """
    n_models = positive_histogram.shape[0]
    leading_zero = np.zeros((n_models, 1))
    true_positives = np.hstack([leading_zero, np.cumsum(positive_histogram[:, ::-1], axis=1)])
    false_positives = np.hstack([leading_zero, np.cumsum(negative_histogram[:, ::-1], axis=1)])
    n_positive = true_positives[:, -1:]
    n_negative = false_positives[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        true_positive_rates = true_positives / n_positive
        false_positive_rates = false_positives / n_negative
    widths = np.diff(false_positive_rates, axis=1)
    heights = 0.5 * (true_positive_rates[:, 1:] + true_positive_rates[:, :-1])
    auc: FloatArray = (widths * heights).sum(axis=1)
    return auc
