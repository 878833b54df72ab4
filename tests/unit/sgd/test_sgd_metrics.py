"""Mergeable metrics against scikit-learn, and merging across blocks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.losses import get_loss
from pipelines.sgd.metrics import MetricAccumulator

Data = tuple[FloatArray, FloatArray]


def _models(n_features: int) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(9)
    return rng.standard_normal((3, n_features)), rng.standard_normal(3)


def test_logistic_metrics_match_sklearn(classification_data: Data) -> None:
    X, y = classification_data
    weights, intercepts = _models(X.shape[1])
    metrics = MetricAccumulator.from_block(X, y, weights, intercepts, get_loss("logistic")).compute()
    assert set(metrics) == {"loss", "count", "accuracy", "auc"}  # loss is the log-loss: named once
    for k in range(3):
        probabilities = 1.0 / (1.0 + np.exp(-(X @ weights[k] + intercepts[k])))
        assert metrics["loss"][k] == pytest.approx(log_loss(y, probabilities), rel=1e-10)
        assert metrics["accuracy"][k] == accuracy_score(y, probabilities > 0.5)
        assert metrics["auc"][k] == pytest.approx(roc_auc_score(y, probabilities), abs=1e-3)
    np.testing.assert_array_equal(metrics["count"], [X.shape[0]] * 3)


def test_histogram_auc_is_exact_for_scores_on_bin_centres() -> None:
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    probabilities = (np.array([3, 3, 10, 12, 40, 41]) + 0.5) / 64
    margins = np.log(probabilities / (1 - probabilities))
    metrics = MetricAccumulator.from_block(
        np.ones((6, 1)), y, np.zeros((1, 1)), np.zeros(1), get_loss("logistic"), n_bins=64
    )
    assert metrics.compute()["auc"][0] == pytest.approx(0.5)  # all-zero model: every score ties
    moved = MetricAccumulator.from_block(
        margins[:, None], y, np.ones((1, 1)), np.zeros(1), get_loss("logistic"), n_bins=64
    )
    assert moved.compute()["auc"][0] == pytest.approx(roc_auc_score(y, probabilities), rel=1e-12)


def test_squared_metrics_match_sklearn(regression_data: Data) -> None:
    X, y = regression_data
    weights, intercepts = _models(X.shape[1])
    metrics = MetricAccumulator.from_block(X, y, weights, intercepts, get_loss("squared")).compute()
    assert set(metrics) == {"loss", "count", "rmse", "mae", "r2"}
    for k in range(3):
        predictions = X @ weights[k] + intercepts[k]
        assert metrics["rmse"][k] == pytest.approx(np.sqrt(mean_squared_error(y, predictions)), rel=1e-12)
        assert metrics["mae"][k] == pytest.approx(mean_absolute_error(y, predictions), rel=1e-12)
        assert metrics["r2"][k] == pytest.approx(r2_score(y, predictions), rel=1e-10)
        assert metrics["loss"][k] == pytest.approx(0.5 * mean_squared_error(y, predictions), rel=1e-12)


@pytest.mark.parametrize("loss_name", ["squared", "logistic"])
def test_three_merged_blocks_equal_one_block(
    loss_name: str, regression_data: Data, classification_data: Data
) -> None:
    X, y = regression_data if loss_name == "squared" else classification_data
    weights, intercepts = _models(X.shape[1])
    whole = MetricAccumulator.from_block(X, y, weights, intercepts, get_loss(loss_name))
    blocks = [
        MetricAccumulator.from_block(X[rows], y[rows], weights, intercepts, get_loss(loss_name))
        for rows in np.array_split(np.arange(X.shape[0]), 3)
    ]
    merged = MetricAccumulator.empty(loss_name, 3)
    for block in blocks:
        shipped = MetricAccumulator.from_arrays(loss_name, block.to_arrays())
        merged = merged.merge(shipped)
    assert merged.count == whole.count
    merged_metrics, whole_metrics = merged.compute(), whole.compute()
    for name, values in whole_metrics.items():
        np.testing.assert_allclose(merged_metrics[name], values, rtol=1e-12, err_msg=name)


def test_merge_rejects_different_losses(regression_data: Data) -> None:
    with pytest.raises(ValueError, match="cannot merge 'squared' metrics with 'logistic'"):
        MetricAccumulator.empty("squared", 2).merge(MetricAccumulator.empty("logistic", 2))


def test_empty_accumulator_computes_nan(regression_data: Data) -> None:
    metrics = MetricAccumulator.empty("logistic", 2).compute()
    assert np.isnan(metrics["loss"]).all()
    assert np.isnan(metrics["auc"]).all()


def test_non_finite_margins_give_nan_metrics_for_that_row_only(classification_data: Data) -> None:
    X, y = classification_data
    weights, intercepts = _models(X.shape[1])
    weights[1] = np.inf  # a diverged row: margins are +-inf or NaN
    huge = X * 1e200  # and features that overflow the margins of every row
    for block in (X, huge):
        with np.errstate(all="ignore"):
            metrics = MetricAccumulator.from_block(block, y, weights, intercepts, get_loss("logistic")).compute()
        assert np.isnan(metrics["auc"][1]) and np.isnan(metrics["accuracy"][1])
    assert np.isfinite(MetricAccumulator.from_block(X, y, weights[[0]], intercepts[[0]], get_loss("logistic"))
                       .compute()["auc"]).all()


def test_multinomial_metrics_match_scikit_learn() -> None:
    """Accuracy and macro-F1 exactly, the macro one-vs-rest AUC within the histogram's resolution, and the
    loss as log_loss; weighted and split across two merged blocks."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    rng = np.random.default_rng(5)
    n, d, C = 600, 4, 3
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(2 * C, d))  # two models of three classes
    b = rng.normal(size=2 * C)
    y = rng.integers(0, C, size=n).astype(np.float64)
    accumulator = MetricAccumulator.from_block(X[:250], y[:250], W, b, get_loss("multinomial", n_classes=C)).merge(
        MetricAccumulator.from_block(X[250:], y[250:], W, b, get_loss("multinomial", n_classes=C)))
    metrics = accumulator.compute()
    for k in range(2):
        margins = X @ W[k * C : (k + 1) * C].T + b[k * C : (k + 1) * C]
        probabilities = np.exp(margins - margins.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        predicted = probabilities.argmax(1)
        assert metrics["accuracy"][k] == pytest.approx(accuracy_score(y, predicted), rel=1e-12)
        assert metrics["macro_f1"][k] == pytest.approx(f1_score(y, predicted, average="macro"), rel=1e-12)
        assert metrics["loss"][k] == pytest.approx(log_loss(y, probabilities), rel=1e-10)
        assert metrics["auc"][k] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), abs=5e-3)


@pytest.mark.parametrize("name", ["logistic", "hinge", "squared_hinge", "modified_huber"])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_compiled_binary_pass_gives_the_numpy_definitions_sums(name: str, weighted: bool,
                                                                     classification_data: Data) -> None:
    """Every sum of the compiled pass against the numpy definition: the counts and histograms equal, the loss sums
    to rounding (the definition's margins are BLAS dot products); a row whose margins overflow is counted broken
    by both; float32 inputs; split designs (dense and CSR parts; the sparse weights read by column or in place); a
    row's sums are those it has alone (bits)."""
    X, y = classification_data
    rng = np.random.default_rng(4)
    weights = np.vstack([rng.standard_normal((4, X.shape[1])), np.full((1, X.shape[1]), 1e308)])
    intercepts = np.append(rng.standard_normal(4), 0.0)
    sample_weight = rng.uniform(0.5, 2.0, y.size) if weighted else None
    loss = get_loss(name)
    wide = np.hstack([weights, rng.standard_normal((weights.shape[0], 20000))])  # 20000 sparse columns never used
    for inputs, rows in ((X, weights), (X.astype(np.float32), weights), (_split(X), weights), (_split(X, 20000), wide)):
        ours = MetricAccumulator.from_block(inputs, y, rows, intercepts, loss, n_bins=64, sample_weight=sample_weight)
        theirs = MetricAccumulator.from_block(inputs, y, rows, intercepts, loss, n_bins=64,
                                              sample_weight=sample_weight, compiled=False)
        assert ours.sums.keys() == theirs.sums.keys() and ours.count == theirs.count
        for key in ("nonfinite_count", "positive_histogram", "negative_histogram", "correct_count", "weight_sum"):
            if key in theirs.sums:
                np.testing.assert_allclose(ours.sums[key], theirs.sums[key], rtol=1e-13, err_msg=key)
        assert ours.sums["nonfinite_count"][:4].tolist() == [0, 0, 0, 0] and ours.sums["nonfinite_count"][4] > 0
        np.testing.assert_allclose(ours.sums["loss_sum"][:4], theirs.sums["loss_sum"][:4], rtol=1e-12)
        assert not np.isfinite(ours.sums["loss_sum"][4]) and not np.isfinite(theirs.sums["loss_sum"][4])
        metrics, definition = ours.compute(), theirs.compute()
        for key, value in definition.items():
            np.testing.assert_allclose(metrics[key], value, rtol=1e-12, err_msg=key)
    for inputs, rows in ((X, weights), (_split(X), weights), (_split(X, 20000), wide)):
        alone = MetricAccumulator.from_block(inputs, y, rows[2:3], intercepts[2:3], loss, sample_weight=sample_weight)
        together = MetricAccumulator.from_block(inputs, y, rows, intercepts, loss, sample_weight=sample_weight)
        for key, value in alone.sums.items():
            assert value.tobytes() == (together.sums[key][2:3] if value.ndim else together.sums[key]).tobytes(), key


def _split(X: FloatArray, unused_columns: int = 0) -> SplitDesign:
    """``X`` as a split design: its first two columns dense, the others CSR with about a third of the entries zeroed
    (explicit zeros removed: rows of 0 to 2 non-zeros), then ``unused_columns`` columns without a non-zero (a wide
    sparse part: its non-zeros few against its width)."""
    sparse = np.hstack([X[:, 2:], np.zeros((X.shape[0], unused_columns))])
    sparse[:, : X.shape[1] - 2][np.random.default_rng(5).uniform(size=(X.shape[0], X.shape[1] - 2)) < 0.35] = 0.0
    return SplitDesign(np.ascontiguousarray(X[:, :2]), sp.csr_matrix(sparse))
