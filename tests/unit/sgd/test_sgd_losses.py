"""Losses: values against per-sample formulas, derivatives against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sgd.losses import LOSS_NAMES, LOSS_TASKS, PairedScalarLoss, ScalarLoss, get_loss, sigmoid

EPSILON = 0.3  # get_loss(name, EPSILON) in these tests
SCALAR_LOSSES = [name for name in LOSS_NAMES if name != "multinomial"]  # one margin per model


def _plain_loss(name: str, margin: float, label: float) -> float:
    """Each loss written from its textbook / scikit-learn (_sgd_fast.pyx) definition, one sample at a time."""
    t, r, eps = 2 * label - 1, margin - label, EPSILON
    if name == "squared":
        return 0.5 * r**2
    if name == "logistic":
        return math.log1p(math.exp(-margin)) if label == 1.0 else math.log1p(math.exp(margin))
    if name == "hinge":
        return max(0.0, 1 - t * margin)
    if name == "squared_hinge":
        return max(0.0, 1 - t * margin) ** 2
    if name == "modified_huber":
        z = t * margin
        return max(0.0, 1 - z) ** 2 if z >= -1 else -4 * z
    if name == "huber":
        return 0.5 * r**2 if abs(r) <= eps else eps * abs(r) - 0.5 * eps**2
    if name == "epsilon_insensitive":
        return max(0.0, abs(r) - eps)
    if name == "squared_epsilon_insensitive":
        return max(0.0, abs(r) - eps) ** 2
    assert name == "poisson"
    mu = math.exp(margin)  # half deviance: y log(y / mu) - y + mu
    return (label * math.log(label / mu) if label > 0 else 0.0) - label + mu


def _plain_derivative(name: str, margin: float, label: float) -> float:
    t, r, eps = 2 * label - 1, margin - label, EPSILON
    if name == "squared":
        return r
    if name == "logistic":
        return 1.0 / (1.0 + math.exp(-margin)) - label
    if name == "hinge":
        return -t if t * margin <= 1 else 0.0
    if name in ("squared_hinge", "modified_huber"):
        z = t * margin
        return -4 * t if z < -1 and name == "modified_huber" else -2 * t * max(0.0, 1 - z)
    if name == "huber":
        return r if abs(r) <= eps else eps * math.copysign(1.0, r)
    if name == "epsilon_insensitive":
        return math.copysign(1.0, r) if abs(r) > eps else 0.0
    if name == "squared_epsilon_insensitive":
        return 2 * math.copysign(1.0, r) * max(0.0, abs(r) - eps)
    assert name == "poisson"
    return math.exp(margin) - label


def _margins_and_labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    margins = rng.uniform(-6.0, 6.0, size=(20, 3))
    labels = rng.integers(0, 2, size=20).astype(np.float64)
    return margins, labels


@pytest.mark.parametrize("name", SCALAR_LOSSES)
def test_value_and_derivative_match_per_sample_formulas(name: str) -> None:
    margins, labels = _margins_and_labels()
    loss = get_loss(name, EPSILON)
    values = loss.value(margins, labels)
    derivatives = loss.derivative(margins, labels)
    assert values.shape == derivatives.shape == margins.shape
    for i in range(margins.shape[0]):
        for k in range(margins.shape[1]):
            assert values[i, k] == pytest.approx(_plain_loss(name, margins[i, k], labels[i]), rel=1e-13)
            assert derivatives[i, k] == pytest.approx(
                _plain_derivative(name, margins[i, k], labels[i]), rel=1e-12, abs=1e-15
            )


@pytest.mark.parametrize("name", SCALAR_LOSSES)
def test_derivative_matches_central_finite_difference(name: str) -> None:
    margins, labels = _margins_and_labels()
    loss = get_loss(name, EPSILON)
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
    with pytest.raises(ValueError, match=r"loss must be one of \['logistic', .*'multinomial'\], got 'tweedie'"):
        get_loss("tweedie")


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "modified_huber", "epsilon_insensitive",
                                  "squared_epsilon_insensitive"])
def test_losses_match_scikit_learns_own_loss_objects(name: str) -> None:
    """Values and derivatives against scikit-learn's compiled SGD losses (its ``loss``/``dloss``), which take
    labels in {-1, +1} for the classifiers (huber is a Cython-only loss there: checked by the formula tests)."""
    from sklearn.linear_model import _sgd_fast

    classes = {"hinge": lambda: _sgd_fast.Hinge(1.0), "squared_hinge": lambda: _sgd_fast.SquaredHinge(1.0),
               "modified_huber": _sgd_fast.ModifiedHuber,
               "epsilon_insensitive": lambda: _sgd_fast.EpsilonInsensitive(EPSILON),
               "squared_epsilon_insensitive": lambda: _sgd_fast.SquaredEpsilonInsensitive(EPSILON)}
    theirs = classes[name]()
    margins, labels = _margins_and_labels()
    if name in ("epsilon_insensitive", "squared_epsilon_insensitive"):
        labels = labels * 2.5 - 0.7
        their_labels = labels
    else:
        their_labels = 2 * labels - 1
    ours = get_loss(name, EPSILON)
    values, derivatives = ours.value(margins, labels), ours.derivative(margins, labels)
    for i in range(margins.shape[0]):
        for k in range(margins.shape[1]):
            assert values[i, k] == pytest.approx(theirs.py_loss(margins[i, k], their_labels[i]), rel=1e-12)
            assert derivatives[i, k] == pytest.approx(theirs.py_dloss(margins[i, k], their_labels[i]), rel=1e-12,
                                                      abs=1e-15)


# --------------------------------------------------------------------------------------------- multinomial

def test_multinomial_loss_is_cross_entropy_of_the_softmax_and_its_gradient() -> None:
    """Against scikit-learn's log_loss per sample and a central finite difference, K = 3 models of C = 4."""
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(3)
    n, K, C = 30, 3, 4
    margins = rng.normal(scale=3.0, size=(n, K * C))
    y = rng.integers(0, C, size=n).astype(np.float64)
    loss = get_loss("multinomial", n_classes=C)
    assert loss.outputs == C
    values = loss.value(margins, y)
    assert values.shape == (n, K)
    for k in range(K):
        m = margins[:, k * C : (k + 1) * C]
        probabilities = np.exp(m - m.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        for i in range(n):
            expected = log_loss([int(y[i])], probabilities[i : i + 1], labels=list(range(C)))
            assert values[i, k] == pytest.approx(expected, rel=1e-12)
    h = 1e-6
    numeric = np.empty_like(margins)
    for j in range(K * C):
        step = np.zeros(K * C)
        step[j] = h
        numeric[:, j] = (loss.value(margins + step, y)[:, j // C] - loss.value(margins - step, y)[:, j // C]) / (2 * h)
    np.testing.assert_allclose(loss.derivative(margins, y), numeric, rtol=1e-6, atol=1e-8)


def test_multinomial_is_stable_for_huge_margins_and_each_model_independent_of_the_others() -> None:
    loss = get_loss("multinomial", n_classes=3)
    margins = np.array([[1000.0, -1000.0, 0.0, 1.0, 2.0, 3.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = loss.value(margins, np.array([1.0]))
    assert values[0, 0] == 2000.0 and np.isfinite(values[0, 1])
    rng = np.random.default_rng(9)
    wide = rng.normal(size=(50, 5 * 3))
    y = rng.integers(0, 3, size=50).astype(np.float64)
    for k in range(5):
        alone = wide[:, k * 3 : (k + 1) * 3]
        assert loss.value(wide, y)[:, k].tobytes() == loss.value(alone, y)[:, 0].tobytes()
        assert loss.derivative(wide, y)[:, k * 3 : (k + 1) * 3].tobytes() == loss.derivative(alone, y).tobytes()


def test_multinomial_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="multinomial needs at least 2 classes, got 1"):
        get_loss("multinomial", n_classes=1)


MARGINS = np.array([-800.0, -40.0, -3.0, -1.3, -1.0, -0.7, -0.3, -0.1, 0.0, 1e-9, 0.2, 0.3, 0.5, 0.9, 1.0, 1.7,
                    2.5, 30.0, 700.0])


@pytest.mark.parametrize("name", SCALAR_LOSSES)
def test_every_loss_compiled_scalar_rule_equals_its_numpy_rule(name: str) -> None:
    """The table of scikit-learn's ``py_loss``/``py_dloss`` tests: each loss's scalar rule, compiled as the
    kernels compile it, against its vectorized numpy definition at margins on every side of each kink and in
    both saturated tails, for every kind of label its task takes."""
    from numba import njit

    loss = get_loss(name, EPSILON)
    assert isinstance(loss, ScalarLoss)
    labels = {"binary": [0.0, 1.0], "count": [0.0, 1.0, 3.0]}.get(LOSS_TASKS[name], [-1.2, 0.0, 0.25, 2.0])
    margins, y = np.meshgrid(MARGINS, labels, indexing="ij")
    margins, y = margins.ravel(), y.ravel()
    finite = np.abs(margins) < 700.0 if name == "poisson" else np.ones(margins.size, dtype=bool)  # exp(800) = inf
    value_at, derivative_at = njit(loss.value_at), njit(loss.derivative_at)
    with np.errstate(over="ignore"):
        values = loss.value(margins[:, np.newaxis], y)[:, 0]
        derivatives = loss.derivative(margins[:, np.newaxis], y)[:, 0]
        compiled_values = np.array([value_at(m, label, loss.epsilon) for m, label in zip(margins, y, strict=True)])
        compiled_derivatives = np.array([derivative_at(m, label, loss.epsilon)
                                         for m, label in zip(margins, y, strict=True)])
    np.testing.assert_allclose(compiled_values[finite], values[finite], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(compiled_derivatives[finite], derivatives[finite], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", [name for name in SCALAR_LOSSES if isinstance(get_loss(name), PairedScalarLoss)])
def test_a_shared_rule_gives_the_derivative_bit_for_bit_and_the_value_to_a_few_ulp(name: str) -> None:
    """The compiled epoch's one-``exp`` rule of a pair: training keeps its bits, the progressive loss its value."""
    from numba import njit

    loss = get_loss(name, EPSILON)
    assert isinstance(loss, PairedScalarLoss)
    labels = [0.0, 1.0, 3.0] if LOSS_TASKS[name] == "count" else [0.0, 1.0]
    margins, y = (grid.ravel() for grid in np.meshgrid(MARGINS, labels, indexing="ij"))
    finite = np.abs(margins) < 700.0 if name == "poisson" else np.ones(margins.size, dtype=bool)
    pair_at, value_at, derivative_at = njit(loss.value_and_derivative_at), njit(loss.value_at), njit(loss.derivative_at)
    with np.errstate(over="ignore"):
        pairs = np.array([pair_at(m, label, loss.epsilon) for m, label in zip(margins, y, strict=True)])
        values = np.array([value_at(m, label, loss.epsilon) for m, label in zip(margins, y, strict=True)])
        derivatives = np.array([derivative_at(m, label, loss.epsilon) for m, label in zip(margins, y, strict=True)])
    assert pairs[:, 1].tobytes() == derivatives.tobytes()
    np.testing.assert_allclose(pairs[finite, 0], values[finite], rtol=1e-15, atol=1e-303)  # m < -700: 1e-304
