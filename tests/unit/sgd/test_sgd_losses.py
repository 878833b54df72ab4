"""Losses: values against per-sample formulas, derivatives against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sgd.losses import LOSS_NAMES, get_loss, sigmoid


def _plain_loss(name: str, margin: float, label: float) -> float:
    if name == "squared":
        return 0.5 * (margin - label) ** 2
    return math.log1p(math.exp(-margin)) if label == 1.0 else math.log1p(math.exp(margin))


def _plain_derivative(name: str, margin: float, label: float) -> float:
    if name == "squared":
        return margin - label
    return 1.0 / (1.0 + math.exp(-margin)) - label


def _margins_and_labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    margins = rng.uniform(-6.0, 6.0, size=(20, 3))
    labels = rng.integers(0, 2, size=20).astype(np.float64)
    return margins, labels


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_value_and_derivative_match_per_sample_formulas(name: str) -> None:
    margins, labels = _margins_and_labels()
    loss = get_loss(name)
    values = loss.value(margins, labels)
    derivatives = loss.derivative(margins, labels)
    assert values.shape == derivatives.shape == margins.shape
    for i in range(margins.shape[0]):
        for k in range(margins.shape[1]):
            assert values[i, k] == pytest.approx(_plain_loss(name, margins[i, k], labels[i]), rel=1e-13)
            assert derivatives[i, k] == pytest.approx(
                _plain_derivative(name, margins[i, k], labels[i]), rel=1e-12, abs=1e-15
            )


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_derivative_matches_central_finite_difference(name: str) -> None:
    margins, labels = _margins_and_labels()
    loss = get_loss(name)
    h = 1e-6
    finite_difference = (loss.value(margins + h, labels) - loss.value(margins - h, labels)) / (2 * h)
    np.testing.assert_allclose(loss.derivative(margins, labels), finite_difference, rtol=1e-6, atol=1e-8)


def test_logistic_loss_is_stable_for_extreme_margins() -> None:
    margins = np.array([[-1000.0], [1000.0], [-1000.0], [1000.0], [-40.0]])
    labels = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    loss = get_loss("logistic")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = loss.value(margins, labels)
        derivatives = loss.derivative(margins, labels)
    np.testing.assert_allclose(values[:, 0], [1000.0, 1000.0, 0.0, 0.0, math.exp(-40.0)], rtol=1e-15)
    np.testing.assert_allclose(
        derivatives[:, 0], [-1.0, 1.0, 0.0, 0.0, math.exp(-40.0)], rtol=1e-12, atol=1e-300
    )


def test_sigmoid_is_accurate_in_the_tails() -> None:
    margins = np.array([-745.0, -50.0, 0.0, 50.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        probabilities = sigmoid(margins)
    assert probabilities[0] < 1e-300
    assert probabilities[1] == pytest.approx(math.exp(-50.0), rel=1e-14)
    assert probabilities[2] == 0.5
    assert probabilities[3] == 1.0


def test_get_loss_rejects_unknown_names_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"loss must be one of \['squared', 'logistic'\], got 'hinge'"):
        get_loss("hinge")
