"""Per-sample losses of a linear model, vectorized over K models.

A *margin* is ``m = x_i . w_k + b_k``. Every function here takes margins of shape
``(n, K)`` (one column per model row) and labels ``y`` of shape ``(n,)`` and returns
an ``(n, K)`` array, so one call serves all K rows of a sweep.

``squared`` and ``logistic`` match Spark MLlib's ``LeastSquaresGradient`` and binary ``LogisticGradient``;
the others follow scikit-learn's ``SGDClassifier``/``SGDRegressor`` losses (``sklearn/linear_model/
_sgd_fast``), with the same subgradient choices at the kinks, and ``poisson`` is scikit-learn's
``HalfPoissonLoss`` (log link) plus the constant that makes it the half deviance (0 at a perfect fit).
Binary labels are stored as 0/1; the margin losses use ``t = 2y - 1`` in {-1, +1}. ``r = m - y``:

============================ ====================================== =======================================
name (task)                  loss(m, y)                             dloss/dm
============================ ====================================== =======================================
squared (regression)         ``r**2 / 2``                            ``r``
logistic (binary)            ``log(1 + exp(m)) - y m``               ``sigmoid(m) - y``
hinge (binary)               ``max(0, 1 - t m)``                     ``-t`` if ``t m <= 1`` else 0
squared_hinge (binary)       ``max(0, 1 - t m)**2``                  ``-2 t max(0, 1 - t m)``
modified_huber (binary)      ``max(0, 1 - t m)**2`` if ``t m >= -1`` ``-2 t max(0, 1 - t m)``, ``-4 t``
                             else ``-4 t m``
huber (regression)           ``r**2 / 2`` if ``|r| <= eps`` else     ``r`` or ``eps sign(r)``
                             ``eps |r| - eps**2 / 2``
epsilon_insensitive          ``max(0, |r| - eps)``                   ``sign(r)`` if ``|r| > eps`` else 0
squared_epsilon_insensitive  ``max(0, |r| - eps)**2``                ``2 sign(r) max(0, |r| - eps)``
poisson (count)              ``exp(m) - y m + y log(y) - y``         ``exp(m) - y``
multinomial (multiclass)     ``logsumexp(m_k.) - m_ky`` (C margins)  ``softmax(m_k.)_c - [y = c]``
============================ ====================================== =======================================

``eps`` is ``model.epsilon`` (scikit-learn's ``epsilon``, default 0.1). Every loss is convex in ``m``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pipelines.sgd import elementary
from pipelines.sgd._types import FloatArray

LOSS_TASKS: dict[str, str] = {
    "logistic": "binary", "hinge": "binary", "squared_hinge": "binary", "modified_huber": "binary",
    "squared": "regression", "huber": "regression", "epsilon_insensitive": "regression",
    "squared_epsilon_insensitive": "regression", "poisson": "count", "multinomial": "multiclass",
}
"""Every loss and its task: ``binary`` (labels 0/1 or two values), ``regression`` (numbers), ``count``
(numbers >= 0, log link), ``multiclass`` (labels are class indices 0..C-1)."""

LOSS_NAMES: tuple[str, ...] = tuple(LOSS_TASKS)
"""Names accepted by :func:`get_loss`."""

CLASSIFICATION_LOSSES: tuple[str, ...] = tuple(name for name, task in LOSS_TASKS.items() if task == "binary")

EPSILON_LOSSES: tuple[str, ...] = ("huber", "epsilon_insensitive", "squared_epsilon_insensitive")
"""The losses that use ``epsilon``."""

DEFAULT_EPSILON = 0.1
"""scikit-learn's default ``epsilon``."""


def task_of(loss: str) -> str:
    """The task of ``loss`` (:data:`LOSS_TASKS`)."""
    return LOSS_TASKS[loss]


class Loss(Protocol):
    """A per-sample loss ``loss(m, y)`` and its derivative in the margin ``m``."""

    name: str
    outputs: int
    """Margins per model: 1, or the number of classes C (``multinomial``: a model is C consecutive rows)."""

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """Per-sample losses, shape ``(n, K)`` from margins ``(n, K * outputs)`` and ``y`` ``(n,)``."""
        ...

    def prediction(self, margins: FloatArray) -> FloatArray:
        """What the model predicts from its margins: the value (regression), the mean ``exp(m)`` (count), a
        score increasing with the margin (binary: ``sigmoid(m)``, P(y=1) for logistic)."""
        ...

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """``dloss/dm`` per sample and margin, shape ``(n, K * outputs)``."""
        ...


@runtime_checkable
class ScalarLoss(Loss, Protocol):
    """A loss of one margin per model that also owns its scalar rule: ``value_at``/``derivative_at`` give
    ``loss(m, y)`` and ``dloss/dm`` at one margin, written with scalar arithmetic only, so that numba compiles
    them into the kernels of :mod:`pipelines.sgd.fused` (the dense inputs' path), while :meth:`value` and
    :meth:`derivative` stay the vectorized numpy definitions (sparse inputs); a table-driven test holds the two
    to 1e-12. Their transcendentals are :mod:`pipelines.sgd.elementary`'s (arithmetic the compiler vectorizes
    over a batch's rows), the numpy definitions' numpy's own: two implementations the tests compare."""

    epsilon: float
    """The width the regression losses use, 0.0 for the others (their scalar rules ignore it)."""

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``loss(m, y)`` at one margin."""
        ...

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``dloss/dm`` at one margin."""
        ...


@runtime_checkable
class PairedScalarLoss(ScalarLoss, Protocol):
    """A scalar loss whose value and derivative share a transcendental (``exp``): one rule gives both at one
    margin for the price of one ``exp``, which the compiled epoch uses where it needs both (the progressive
    training loss). Its derivative is bit for bit :meth:`derivative_at` (training keeps its bits); its value is
    :meth:`value_at` to a few ulp. The losses without a transcendental have no such rule: the kernels call their
    two rules."""

    @staticmethod
    def value_and_derivative_at(m: float, y: float, epsilon: float) -> tuple[float, float]:
        """``(loss(m, y), dloss/dm)`` at one margin."""
        ...


def sigmoid(margins: FloatArray) -> FloatArray:
    """Logistic function ``1 / (1 + exp(-m))`` without overflow.

    ``exp(-m)`` overflows for ``m < -709.78``; margins are floored at -700 first, which
    changes the result by less than ``1e-304`` (``sigmoid(-700) ~ 9.9e-305``). The plain
    formula is otherwise accurate to a few ulp over the whole range, and one ``exp``
    is the cheapest form in the training hot path.

    Parameters
    ----------
    margins : ndarray of float64, any shape

    Returns
    -------
    ndarray of float64, same shape, values in ``[0, 1]``.
    """
    result: FloatArray = 1.0 / (1.0 + np.exp(-np.maximum(margins, -700.0)))
    return result


class SquaredLoss:
    """Squared error ``0.5 * (m - y)**2`` (MLlib ``LeastSquaresGradient``)."""

    name: str = "squared"
    outputs: int = 1
    epsilon: float = 0.0

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """``0.5 * (m - y)**2``, shape ``(n, K)``.

        Parameters
        ----------
        margins : ndarray of shape (n, K)
        y : ndarray of shape (n,)
        """
        residuals = margins - y[:, np.newaxis]
        result: FloatArray = 0.5 * residuals * residuals
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """``m - y``, shape ``(n, K)``."""
        result: FloatArray = margins - y[:, np.newaxis]
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``r**2 / 2``, ``r = m - y``."""
        r = m - y
        return 0.5 * r * r

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``m - y``."""
        return m - y

    def prediction(self, margins: FloatArray) -> FloatArray:
        return margins


class LogisticLoss:
    """Binary cross-entropy on margins, labels in {0.0, 1.0} (MLlib ``LogisticGradient``).

    ``loss = y * log(1 + exp(-m)) + (1 - y) * log(1 + exp(m))``, each term via
    :func:`numpy.logaddexp` so that no ``exp`` overflows and no large terms cancel.
    For y in {0, 1} this is exactly the two-branch definition; for soft labels in
    ``[0, 1]`` it is the cross-entropy against ``sigmoid(m)``.
    """

    name: str = "logistic"
    outputs: int = 1
    epsilon: float = 0.0

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """Per-sample log-loss, shape ``(n, K)``.

        Parameters
        ----------
        margins : ndarray of shape (n, K)
        y : ndarray of shape (n,), values 0.0 or 1.0
        """
        # log(1 + e^m) - y*m equals log(1 + e^-m) for y = 1 and log(1 + e^m) for y = 0: one logaddexp
        # instead of two (measured 5x faster on (n, K) blocks), exact to rounding.
        result: FloatArray = np.logaddexp(0.0, margins) - y[:, np.newaxis] * margins
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        """``sigmoid(m) - y``, shape ``(n, K)``."""
        result: FloatArray = sigmoid(margins) - y[:, np.newaxis]
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``log(1 + e^m) - y m``, as ``max(m, 0) + log1p(e^-|m|) - y m`` (no ``exp`` overflows)."""
        result: float = (m if m > 0.0 else 0.0) + elementary.log1p_unit(elementary.exp(-abs(m))) - y * m
        return result

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``sigmoid(m) - y`` from ``e = e^-|m|`` (no ``exp`` overflows): ``1 / (1 + e)`` for ``m >= 0``,
        ``e / (1 + e)`` below (0 below -745, where :func:`sigmoid` gives about ``1e-304``); NaN stays NaN."""
        e = elementary.exp(-abs(m))
        result: float = (1.0 if m >= 0.0 else e) / (1.0 + e) - y
        return result

    @staticmethod
    def value_and_derivative_at(m: float, y: float, epsilon: float) -> tuple[float, float]:
        """Both from one ``e = e^-|m|``, each with its own rule's bits."""
        e = elementary.exp(-abs(m))
        value: float = (m if m > 0.0 else 0.0) + elementary.log1p_unit(e) - y * m
        derivative: float = (1.0 if m >= 0.0 else e) / (1.0 + e) - y
        return value, derivative

    def prediction(self, margins: FloatArray) -> FloatArray:
        return sigmoid(margins)


def _signed(y: FloatArray) -> FloatArray:
    """0/1 labels as ``t`` in {-1, +1}, a column to broadcast against ``(n, K)`` margins."""
    signed: FloatArray = (2.0 * y - 1.0)[:, np.newaxis]
    return signed


class _BinaryMarginLoss:
    """Shared by the margin classifiers: labels 0/1 become ``t = 2y - 1``; scores are ``sigmoid(m)``."""

    name: str = ""
    outputs: int = 1
    epsilon: float = 0.0

    def prediction(self, margins: FloatArray) -> FloatArray:
        return sigmoid(margins)


class HingeLoss(_BinaryMarginLoss):
    """``max(0, 1 - t m)`` (scikit-learn ``Hinge(1.0)``: subgradient ``-t`` where ``t m <= 1``)."""

    name = "hinge"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        result: FloatArray = np.maximum(0.0, 1.0 - _signed(y) * margins)
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        t = _signed(y)
        result: FloatArray = np.where(t * margins <= 1.0, -t, 0.0)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``max(0, 1 - t m)``."""
        return max(0.0, 1.0 - (2.0 * y - 1.0) * m)

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``-t`` where ``t m <= 1``, else 0."""
        t = 2.0 * y - 1.0
        return -t if t * m <= 1.0 else 0.0


class SquaredHingeLoss(_BinaryMarginLoss):
    """``max(0, 1 - t m)**2`` (scikit-learn ``SquaredHinge(1.0)``)."""

    name = "squared_hinge"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        gap = np.maximum(0.0, 1.0 - _signed(y) * margins)
        result: FloatArray = gap * gap
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        t = _signed(y)
        result: FloatArray = -2.0 * t * np.maximum(0.0, 1.0 - t * margins)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``max(0, 1 - t m)**2``."""
        gap = max(0.0, 1.0 - (2.0 * y - 1.0) * m)
        return gap * gap

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``-2 t max(0, 1 - t m)``."""
        t = 2.0 * y - 1.0
        return -2.0 * t * max(0.0, 1.0 - t * m)


class ModifiedHuberLoss(_BinaryMarginLoss):
    """Quadratically smoothed hinge (scikit-learn ``ModifiedHuber``): ``max(0, 1 - z)**2`` for ``z = t m >=
    -1``, ``-4 z`` below."""

    name = "modified_huber"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        z = _signed(y) * margins
        gap = np.maximum(0.0, 1.0 - z)
        result: FloatArray = np.where(z >= -1.0, gap * gap, -4.0 * z)
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        t = _signed(y)
        z = t * margins
        result: FloatArray = np.where(z >= -1.0, -2.0 * t * np.maximum(0.0, 1.0 - z), -4.0 * t)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``max(0, 1 - z)**2`` for ``z = t m >= -1``, ``-4 z`` below."""
        z = (2.0 * y - 1.0) * m
        gap = max(0.0, 1.0 - z)
        return gap * gap if z >= -1.0 else -4.0 * z

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``-2 t max(0, 1 - z)`` for ``z = t m >= -1``, ``-4 t`` below."""
        t = 2.0 * y - 1.0
        z = t * m
        return -2.0 * t * max(0.0, 1.0 - z) if z >= -1.0 else -4.0 * t


class _RegressionLoss:
    """Shared by the losses of a residual ``r = m - y`` with a width ``epsilon``."""

    name: str = ""
    outputs: int = 1

    def __init__(self, epsilon: float = DEFAULT_EPSILON) -> None:
        self.epsilon = float(epsilon)

    def prediction(self, margins: FloatArray) -> FloatArray:
        return margins


class HuberLoss(_RegressionLoss):
    """Squared near 0, linear beyond ``epsilon`` (scikit-learn ``Huber(epsilon)``)."""

    name = "huber"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        r = np.abs(margins - y[:, np.newaxis])
        eps = self.epsilon
        result: FloatArray = np.where(r <= eps, 0.5 * r * r, eps * r - 0.5 * eps * eps)
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        r = margins - y[:, np.newaxis]
        result: FloatArray = np.clip(r, -self.epsilon, self.epsilon)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``r**2 / 2`` for ``|r| <= epsilon``, else ``epsilon |r| - epsilon**2 / 2``."""
        r = abs(m - y)
        return 0.5 * r * r if r <= epsilon else epsilon * r - 0.5 * epsilon * epsilon

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``r`` clipped to ``[-epsilon, epsilon]``."""
        return min(max(m - y, -epsilon), epsilon)


class EpsilonInsensitiveLoss(_RegressionLoss):
    """``max(0, |r| - epsilon)`` (scikit-learn ``EpsilonInsensitive``; the linear SVR loss)."""

    name = "epsilon_insensitive"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        result: FloatArray = np.maximum(0.0, np.abs(margins - y[:, np.newaxis]) - self.epsilon)
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        r = margins - y[:, np.newaxis]
        result: FloatArray = np.where(np.abs(r) > self.epsilon, np.sign(r), 0.0)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``max(0, |r| - epsilon)``."""
        return max(0.0, abs(m - y) - epsilon)

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``sign(r)`` where ``|r| > epsilon``, else 0."""
        r = m - y
        sign = 1.0 if r > 0.0 else (-1.0 if r < 0.0 else 0.0)
        return sign if abs(r) > epsilon else 0.0


class SquaredEpsilonInsensitiveLoss(_RegressionLoss):
    """``max(0, |r| - epsilon)**2`` (scikit-learn ``SquaredEpsilonInsensitive``)."""

    name = "squared_epsilon_insensitive"

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        gap = np.maximum(0.0, np.abs(margins - y[:, np.newaxis]) - self.epsilon)
        result: FloatArray = gap * gap
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        r = margins - y[:, np.newaxis]
        result: FloatArray = 2.0 * np.sign(r) * np.maximum(0.0, np.abs(r) - self.epsilon)
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``max(0, |r| - epsilon)**2``."""
        gap = max(0.0, abs(m - y) - epsilon)
        return gap * gap

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``2 sign(r) max(0, |r| - epsilon)``."""
        r = m - y
        sign = 1.0 if r > 0.0 else (-1.0 if r < 0.0 else 0.0)
        return 2.0 * sign * max(0.0, abs(r) - epsilon)


class PoissonLoss:
    """Half Poisson deviance with a log link, labels ``y >= 0`` (counts or rates), prediction ``exp(m)``.

    ``exp(m) - y m + y log(y) - y`` (``y log y = 0`` at ``y = 0``): scikit-learn's ``HalfPoissonLoss``
    plus the constant that makes a perfect fit 0, so the mean is half the mean Poisson deviance.
    """

    name: str = "poisson"
    outputs: int = 1
    epsilon: float = 0.0

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        constant = np.where(y > 0.0, y * np.log(np.where(y > 0.0, y, 1.0)), 0.0) - y
        result: FloatArray = np.exp(margins) - y[:, np.newaxis] * margins + constant[:, np.newaxis]
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        result: FloatArray = np.exp(margins) - y[:, np.newaxis]
        return result

    @staticmethod
    def value_at(m: float, y: float, epsilon: float) -> float:
        """``exp(m) - y m + (y log(y) - y)``, ``y log y = 0`` at ``y = 0``."""
        constant = y * elementary.log(y) if y > 0.0 else 0.0
        result: float = elementary.exp(m) - y * m + (constant - y)
        return result

    @staticmethod
    def derivative_at(m: float, y: float, epsilon: float) -> float:
        """``exp(m) - y``."""
        result: float = elementary.exp(m) - y
        return result

    @staticmethod
    def value_and_derivative_at(m: float, y: float, epsilon: float) -> tuple[float, float]:
        """Both from one ``exp(m)``, each with its own rule's bits."""
        mean = elementary.exp(m)
        constant = y * elementary.log(y) if y > 0.0 else 0.0
        value: float = mean - y * m + (constant - y)
        derivative: float = mean - y
        return value, derivative

    def prediction(self, margins: FloatArray) -> FloatArray:
        result: FloatArray = np.exp(margins)
        return result


class MultinomialLoss:
    """Softmax cross-entropy over ``C`` classes; labels are class indices ``0..C-1`` (as floats).

    A model is C consecutive margin columns ``m_k = (m_k0 .. m_k,C-1)`` (one weight row per class; no
    reference class, like scikit-learn's multinomial ``LogisticRegression``):
    ``loss = logsumexp(m_k) - m_k,y`` and ``dloss/dm_kc = softmax(m_k)_c - [y = c]``. The log-sum-exp is
    shifted by the row's largest margin, so no ``exp`` overflows. Each model's C columns are reduced on
    their own, so a model's bits do not depend on the other models in the pass.
    """

    name: str = "multinomial"

    def __init__(self, n_classes: int) -> None:
        if n_classes < 2:
            raise ValueError(f"multinomial needs at least 2 classes, got {n_classes}")
        self.outputs = int(n_classes)

    def _grouped(self, margins: FloatArray) -> FloatArray:
        grouped: FloatArray = margins.reshape(margins.shape[0], -1, self.outputs)
        return grouped

    def _log_softmax(self, margins: FloatArray) -> FloatArray:
        grouped = self._grouped(margins)
        shifted = grouped - grouped.max(axis=2, keepdims=True)
        result: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=2, keepdims=True))
        return result

    def value(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        log_probabilities = self._log_softmax(margins)
        classes = y.astype(np.int64)
        result: FloatArray = -log_probabilities[np.arange(y.shape[0]), :, classes]
        return result

    def derivative(self, margins: FloatArray, y: FloatArray) -> FloatArray:
        probabilities = np.exp(self._log_softmax(margins))
        probabilities[np.arange(y.shape[0]), :, y.astype(np.int64)] -= 1.0
        result: FloatArray = probabilities.reshape(margins.shape)
        return result

    def prediction(self, margins: FloatArray) -> FloatArray:
        """Class probabilities, shape ``(n, K * C)``."""
        result: FloatArray = np.exp(self._log_softmax(margins)).reshape(margins.shape)
        return result


_LOSSES: dict[str, type] = {
    "squared": SquaredLoss, "logistic": LogisticLoss, "hinge": HingeLoss, "squared_hinge": SquaredHingeLoss,
    "modified_huber": ModifiedHuberLoss, "huber": HuberLoss, "epsilon_insensitive": EpsilonInsensitiveLoss,
    "squared_epsilon_insensitive": SquaredEpsilonInsensitiveLoss, "poisson": PoissonLoss,
    "multinomial": MultinomialLoss,
}


def get_loss(name: str, epsilon: float = DEFAULT_EPSILON, n_classes: int = 2) -> Loss:
    """Return the loss called ``name`` (with ``epsilon`` for :data:`EPSILON_LOSSES`, ``n_classes`` for
    ``multinomial``).

    Parameters
    ----------
    name : str
        One of :data:`LOSS_NAMES`.
    epsilon : float
        The width of huber's quadratic zone and the epsilon-insensitive losses' dead zone.
    n_classes : int
        ``multinomial``: the number of classes C (>= 2).

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`LOSS_NAMES`.
    """
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {list(LOSS_NAMES)}, got {name!r}") from None
    loss: Loss = cls(epsilon) if name in EPSILON_LOSSES else cls(n_classes) if name == "multinomial" else cls()
    return loss
