"""Evaluation metrics as mergeable sums, so that partitions can be evaluated apart.

Each partition builds a :class:`MetricAccumulator` from its block with
:meth:`MetricAccumulator.from_block` (a binary loss on dense inputs in compiled code:
:mod:`pipelines.sgd.fused_metrics`); accumulators add up with
:meth:`~MetricAccumulator.merge` (any order gives the same sums up to rounding) and
:meth:`~MetricAccumulator.compute` turns the total into metrics per model row.

Sums kept, per model row ``k`` (``r_ik = prediction(m_ik) - y_i`` the residual, the prediction being the
margin for regression losses and ``exp(m)`` for poisson; ``p_ik = sigmoid(m_ik)``):

* always: ``count = n`` and ``loss_sum = sum_i loss(m_ik, y_i)``;
* regression and count losses: ``sum r^2``, ``sum |r|``, ``sum y``, ``sum y^2``;
* binary losses (logistic and the margin classifiers): the number of correct predictions (predict 1 when ``m > 0``, i.e.
  ``p > 0.5``) and histograms of ``p`` over ``n_bins`` equal-width bins of ``[0, 1]``,
  one for positive and one for negative labels.

Metrics returned by :meth:`~MetricAccumulator.compute`:

* ``loss`` = ``loss_sum / n`` (mean data loss, no penalty), ``count`` = ``n``;
* regression and count: ``rmse = sqrt(sum r^2 / n)``, ``mae = sum |r| / n``,
  ``r2 = 1 - SSE / SST`` with ``SST = sum y^2 - (sum y)^2 / n`` (NaN when ``SST = 0``;
  the one-pass SST loses precision when ``|mean y|`` dwarfs the spread of ``y``); count (poisson) also
  ``poisson_deviance = 2 * loss`` (scikit-learn's ``mean_poisson_deviance``);
* binary: ``accuracy``, and ``auc``: the area under the ROC curve through the
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
from pipelines.sgd.design import Design, SplitDesign
from pipelines.sgd.fused_metrics import binary_validation_sums
from pipelines.sgd.kernels import compute_margins
from pipelines.sgd.losses import LOSS_TASKS, Loss, ScalarLoss, get_loss, sigmoid

DEFAULT_AUC_BINS = 2048
"""Histogram bins of predicted probability used for the AUC."""

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("loss", "accuracy", "auc"),
    "multiclass": ("loss", "accuracy", "macro_f1", "auc"),
    "regression": ("loss", "rmse", "mae", "r2"),
    "count": ("loss", "poisson_deviance", "rmse", "mae", "r2"),
}
TASK_MAIN_METRIC: dict[str, str] = {"binary": "val_auc", "regression": "val_rmse", "count": "val_poisson_deviance",
                                     "multiclass": "val_accuracy"}

MULTICLASS_AUC_BINS = 256
"""Probability bins per class of a multinomial model's one-vs-rest AUCs (K x C x bins histograms)."""

VALIDATION_METRICS: dict[str, tuple[str, ...]] = {name: TASK_METRICS[task] for name, task in LOSS_TASKS.items()}
"""The registry of metric names: what :meth:`MetricAccumulator.compute` reports per loss and every curve,
column and MLflow metric is named after (``val_<name>``; ``loss`` is the mean training loss function, e.g.
the log-loss for logistic, half the deviance for poisson)."""

MAIN_METRIC: dict[str, str] = {name: TASK_MAIN_METRIC[task] for name, task in LOSS_TASKS.items()}
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
        loss: Loss,
        n_bins: int = DEFAULT_AUC_BINS,
        sample_weight: FloatArray | None = None,
        compiled: bool = True,
    ) -> MetricAccumulator:
        """Sums over one block of rows (weighted by ``sample_weight`` when given: every sum, the AUC
        histograms included, and a ``weight_sum`` that :meth:`compute` divides by instead of the count).

        Parameters
        ----------
        X : ndarray of shape (n, d)
        y : ndarray of shape (n,)
        weights : ndarray of shape (K, d)
        intercepts : ndarray of shape (K,)
        loss : Loss
            The loss with its parameters.
        n_bins : int
            Probability histogram bins for the AUC (logistic only), ``>= 1``.
        sample_weight : ndarray of shape (n,), optional
        compiled : bool
            A binary loss's sums from the compiled pass of :mod:`pipelines.sgd.fused_metrics` (dense inputs or a
            split design; one pass over the rows, no ``(n, K)`` arrays); False: from the numpy definition below (the
            tests' oracle), which every other loss takes.
        """
        loss_name = loss.name
        task = LOSS_TASKS[loss_name]
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
        if compiled and task == "binary" and isinstance(X, np.ndarray | SplitDesign) and isinstance(loss, ScalarLoss):
            compiled_sums = binary_validation_sums(X, y, weights, intercepts, loss, n_bins, sample_weight)
            if sample_weight is not None:
                compiled_sums["weight_sum"] = np.asarray(float(np.add.reduce(sample_weight)))
            return cls(loss_name, int(X.shape[0]), compiled_sums)
        with np.errstate(over="ignore", invalid="ignore"):
            margins = compute_margins(X, weights, intercepts)
            finite = np.isfinite(margins)
            values = loss.value(margins, y)
            # a model's C margins (multinomial) are broken when any is
            finite_models = finite if loss.outputs == 1 else np.asarray(
                finite.reshape(finite.shape[0], -1, loss.outputs).all(axis=2))
            sums: dict[str, FloatArray] = {
                "loss_sum": (values if sample_weight is None else values * sample_weight[:, np.newaxis]).sum(axis=0),
                "nonfinite_count": (~finite_models).sum(axis=0, dtype=np.float64)}
        margins = np.where(finite, margins, 0.0)
        if sample_weight is not None:
            sums["weight_sum"] = np.asarray(float(np.add.reduce(sample_weight)))
        weight_column = np.ones((1, 1)) if sample_weight is None else sample_weight[:, np.newaxis]
        if task == "multiclass":
            sums.update(_multiclass_sums(loss.prediction(margins), y, loss.outputs, sample_weight))
        elif task != "binary":
            with np.errstate(over="ignore", invalid="ignore"):
                residuals = loss.prediction(margins) - y[:, np.newaxis]
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
        """The zero accumulator (identity of :meth:`merge`) for ``n_models`` rows (not for ``multinomial``, whose
        sums depend on the number of classes)."""
        if LOSS_TASKS[loss_name] == "multiclass":
            raise ValueError("MetricAccumulator.empty does not apply to multinomial; merge from_block results")
        zeros = np.zeros(n_models)
        sums: dict[str, FloatArray] = {"loss_sum": zeros, "nonfinite_count": zeros}
        if LOSS_TASKS[loss_name] != "binary":
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
            if LOSS_TASKS[self.loss_name] == "multiclass":
                metrics.update(self._multiclass_metrics(count))
            elif LOSS_TASKS[self.loss_name] != "binary":
                metrics.update(self._regression_metrics(count))
                if LOSS_TASKS[self.loss_name] == "count":
                    metrics["poisson_deviance"] = 2.0 * metrics["loss"]
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

    def _multiclass_metrics(self, count: float) -> dict[str, FloatArray]:
        """Accuracy, macro-F1 (the mean over classes with any true or predicted row of ``2 TP / (2 TP + FP +
        FN)``) and the macro one-vs-rest AUC (the mean over classes with validation rows both in and out of
        the class)."""
        correct_count = self.sums["correct_count"]
        true_positive, predicted = self.sums["true_positive"], self.sums["predicted_count"]
        actual = self.sums["actual_count"][np.newaxis, :]
        denominator = predicted + actual  # 2 TP + FP + FN
        f1 = np.where(denominator > 0, 2.0 * true_positive / np.where(denominator > 0, denominator, 1.0), np.nan)
        positive, negative = self.sums["positive_histogram"], self.sums["negative_histogram"]
        n_models, n_classes, n_bins = positive.shape
        per_class_auc = histogram_auc(positive.reshape(-1, n_bins), negative.reshape(-1, n_bins)).reshape(
            n_models, n_classes)
        return {
            "accuracy": correct_count / count if count else np.full_like(correct_count, np.nan),
            "macro_f1": _nanmean_rows(f1),
            "auc": _nanmean_rows(per_class_auc),
        }

    def _classification_metrics(self, count: float) -> dict[str, FloatArray]:
        correct_count = self.sums["correct_count"]
        accuracy = correct_count / count if count else np.full_like(correct_count, np.nan)
        return {
            "accuracy": accuracy,
            "auc": histogram_auc(self.sums["positive_histogram"], self.sums["negative_histogram"]),
        }


def _nanmean_rows(values: FloatArray) -> FloatArray:
    """Mean of each row over its non-NaN entries (NaN for a row of NaNs), without a warning."""
    defined = ~np.isnan(values)
    counts = defined.sum(axis=1)
    totals = np.where(defined, values, 0.0).sum(axis=1)
    result: FloatArray = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    return result


def _multiclass_sums(probabilities: FloatArray, y: FloatArray, n_classes: int,
                     sample_weight: FloatArray | None) -> dict[str, FloatArray]:
    """A multinomial model's counts: correct predictions ``(K,)``, true positives and predictions per class
    ``(K, C)``, rows per class ``(C,)``, and per-class probability histograms ``(K, C, bins)`` of the rows in
    and out of each class (weights summed instead of counted with ``sample_weight``)."""
    n_rows = probabilities.shape[0]
    grouped = probabilities.reshape(n_rows, -1, n_classes)  # (n, K, C)
    n_models = grouped.shape[1]
    classes = y.astype(np.int64)
    weights = np.ones(n_rows) if sample_weight is None else sample_weight
    predicted = grouped.argmax(axis=2)  # (n, K)
    correct = predicted == classes[:, np.newaxis]
    one_hot_predicted = np.zeros((n_rows, n_models, n_classes))
    np.put_along_axis(one_hot_predicted, predicted[:, :, np.newaxis], 1.0, axis=2)
    weighted = one_hot_predicted * weights[:, np.newaxis, np.newaxis]
    in_class = np.zeros((n_rows, n_classes), dtype=bool)
    in_class[np.arange(n_rows), classes] = True
    positive, negative = _probability_histograms(
        probabilities,
        np.tile(in_class, (1, n_models)), MULTICLASS_AUC_BINS, sample_weight)
    return {
        "correct_count": (correct * weights[:, np.newaxis]).sum(axis=0),
        "true_positive": (weighted * in_class[:, np.newaxis, :]).sum(axis=0),
        "predicted_count": weighted.sum(axis=0),
        "actual_count": np.bincount(classes, weights=weights, minlength=n_classes).astype(np.float64),
        "positive_histogram": positive.reshape(n_models, n_classes, MULTICLASS_AUC_BINS),
        "negative_histogram": negative.reshape(n_models, n_classes, MULTICLASS_AUC_BINS),
    }


def _probability_histograms(
    probabilities: FloatArray, is_positive: npt.NDArray[np.bool_], n_bins: int,
    sample_weight: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Per-row counts (weight sums with ``sample_weight``) of ``probabilities`` (n, K) in ``n_bins`` bins, split
    by label: ``is_positive`` is ``(n,)`` (one label per row) or ``(n, K)`` (one per row and column).

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
