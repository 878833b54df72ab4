"""First-order optimizers with per-row state, vectorized over K model rows.

Each optimizer follows PyTorch's update rule (defaults in brackets). ``g`` is the
gradient, ``s`` the row's step size (learning rate times schedule multiplier), ``n``
the row's 1-based step count after this update:

=========== =====================================================================
sgd         ``w -= s * g``
momentum    ``buf = mu * buf + g; w -= s * buf``                      [mu = 0.9]
nesterov    ``buf = mu * buf + g; w -= s * (g + mu * buf)``           [mu = 0.9]
adagrad     ``G += g**2; w -= s * g / (sqrt(G) + eps)``                [eps = 1e-10]
rmsprop     ``v = alpha * v + (1 - alpha) * g**2; w -= s * g / (sqrt(v) + eps)``
                                                                      [alpha = 0.99, eps = 1e-8]
adam        ``m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g**2;``
            ``w -= s / (1 - b1**n) * m / (sqrt(v) / sqrt(1 - b2**n) + eps)``
                                                      [b1 = 0.9, b2 = 0.999, eps = 1e-8]
adamw       ``w *= 1 - s * weight_decay``, then ``adam``
=========== =====================================================================

Regularization (see :mod:`pipelines.sgd.regularization`). For every optimizer but
``adamw`` the L2 gradient ``reg_param * (1 - l1_ratio) * w`` is added to ``g``; for
``adamw`` that coefficient is the decoupled ``weight_decay`` instead and is not added
to ``g``. After the update, the L1 part is applied by soft-thresholding each weight
row by ``s * reg_param * l1_ratio`` (for adaptive optimizers this uses the raw step
size ``s``, not the per-coordinate effective step). Intercepts follow the same rule
with no penalty, weight decay or thresholding.

With ``sgd`` and ``l1_ratio = 0`` the weight update is ``w - s * (g + reg_param * w)``,
equal up to rounding to Spark MLlib's ``SquaredL2Updater``
(``w * (1 - s * reg_param) - s * g``) and to ``SimpleUpdater`` when ``reg_param = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd._validation import Interval, OneOf, Optional, Rule, check_rules
from pipelines.sgd.regularization import Penalties, Regularization, as_penalties

OPTIMIZER_NAMES: tuple[str, ...] = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
)
"""Names accepted by :class:`OptimizerSpec`."""

SLOT_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum_buffer",),
    "nesterov": ("momentum_buffer",),
    "adagrad": ("sum_sq",),
    "rmsprop": ("square_avg",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}
"""State slots each optimizer keeps per parameter (PyTorch's names where it has them)."""

DEFAULT_EPS: dict[str, float] = {"adagrad": 1e-10, "rmsprop": 1e-8, "adam": 1e-8, "adamw": 1e-8}
"""PyTorch's default ``eps`` per optimizer, used when :attr:`OptimizerSpec.eps` is None."""


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer and its hyper-parameters; unused ones are ignored.

    The configuration's ``train.optimizer`` is this spec, validated when the configuration is loaded
    (:data:`RULES`).

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZER_NAMES`.
    momentum : float
        ``mu`` of ``momentum`` and ``nesterov``, ``0 <= momentum < 1``.
    beta1, beta2 : float
        Adam's moment decay rates, each in ``[0, 1)``.
    alpha : float
        RMSprop's smoothing constant, in ``[0, 1)``.
    eps : float or None
        Denominator term, ``> 0``; None (the default) means the optimizer's own default,
        :data:`DEFAULT_EPS` (PyTorch's: 1e-10 for adagrad, 1e-8 for the others).
    """

    name: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    alpha: float = 0.99
    eps: float | None = None

    RULES: ClassVar[dict[str, Rule]] = {
        "name": OneOf(OPTIMIZER_NAMES),
        "momentum": Interval(0, 1, "left"),
        "beta1": Interval(0, 1, "left"),
        "beta2": Interval(0, 1, "left"),
        "alpha": Interval(0, 1, "left"),
        "eps": Optional(Interval(0, None, "neither")),
    }
    """One rule per parameter, applied at construction."""

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)

    @property
    def resolved_eps(self) -> float:
        """``eps`` if set, else PyTorch's default for this optimizer (0.0 where unused)."""
        if self.eps is not None:
            return self.eps
        return DEFAULT_EPS.get(self.name, 0.0)

    @property
    def rule(self) -> UpdateRule[Any]:
        """The update rule of :data:`UPDATE_RULES`."""
        return UPDATE_RULES[self.name]

    @property
    def constants(self) -> RuleConstants:
        """The hyper-parameters the rule reads (``eps`` resolved)."""
        return RuleConstants(self.momentum, self.beta1, self.beta2, self.alpha, self.resolved_eps)

    @property
    def decoupled_decay(self) -> bool:
        """AdamW: the L2 term decays the weights before the rule instead of joining the gradient."""
        return self.name == "adamw"


@dataclass
class OptimizerState:
    """Per-row optimizer state for K model rows.

    Attributes
    ----------
    weight_slots : dict of str to ndarray of shape (K, d)
        One array per slot in ``SLOT_NAMES[spec.name]``.
    intercept_slots : dict of str to ndarray of shape (K,)
        The same slots for the intercepts.
    step : ndarray of shape (K,), int64
        Updates applied so far per row; the next update is step ``step + 1``.
    """

    weight_slots: dict[str, FloatArray]
    intercept_slots: dict[str, FloatArray]
    step: IntArray

    @property
    def n_rows(self) -> int:
        """K, the number of model rows."""
        return int(self.step.shape[0])

    def copy(self) -> OptimizerState:
        """A deep copy (all arrays copied)."""
        return OptimizerState(
            weight_slots={name: slot.copy() for name, slot in self.weight_slots.items()},
            intercept_slots={name: slot.copy() for name, slot in self.intercept_slots.items()},
            step=self.step.copy(),
        )

    def select(self, rows: npt.NDArray[np.integer] | Sequence[int]) -> OptimizerState:
        """State of the given rows only (copies), e.g. after pruning diverged rates.

        Parameters
        ----------
        rows : int array of shape (K',)
            Row indices into this state.
        """
        indices = np.asarray(rows, dtype=np.int64)
        return OptimizerState(
            weight_slots={name: slot[indices] for name, slot in self.weight_slots.items()},
            intercept_slots={name: slot[indices] for name, slot in self.intercept_slots.items()},
            step=self.step[indices],
        )

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat ``{name: array}`` form for shipping (Arrow columns, pickle).

        Keys are ``"step"``, ``"weights.<slot>"`` and ``"intercepts.<slot>"``.
        """
        arrays: dict[str, npt.NDArray[np.generic]] = {"step": self.step}
        arrays.update({f"weights.{name}": slot for name, slot in self.weight_slots.items()})
        arrays.update({f"intercepts.{name}": slot for name, slot in self.intercept_slots.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> OptimizerState:
        """Inverse of :meth:`to_arrays`.

        Raises
        ------
        ValueError
            If ``"step"`` is missing or a key has an unknown prefix.
        """
        if "step" not in arrays:
            raise ValueError(f"optimizer state arrays need a 'step' key, got {sorted(arrays)}")
        weight_slots: dict[str, FloatArray] = {}
        intercept_slots: dict[str, FloatArray] = {}
        for key, array in arrays.items():
            prefix, _, slot = key.partition(".")
            if key == "step":
                continue
            if prefix == "weights":
                weight_slots[slot] = np.asarray(array, dtype=np.float64)
            elif prefix == "intercepts":
                intercept_slots[slot] = np.asarray(array, dtype=np.float64)
            else:
                raise ValueError(
                    f"optimizer state key {key!r} must be 'step', 'weights.<slot>' or 'intercepts.<slot>'"
                )
        return cls(weight_slots, intercept_slots, np.asarray(arrays["step"], dtype=np.int64))


def init_state(spec: OptimizerSpec, n_rows: int, n_features: int) -> OptimizerState:
    """Zero state for ``n_rows`` (K) model rows of ``n_features`` (d) weights."""
    slot_names = SLOT_NAMES[spec.name]
    return OptimizerState(
        weight_slots={name: np.zeros((n_rows, n_features)) for name in slot_names},
        intercept_slots={name: np.zeros(n_rows) for name in slot_names},
        step=np.zeros(n_rows, dtype=np.int64),
    )


class RuleConstants(NamedTuple):
    """An optimizer's hyper-parameters as its update rule reads them (a named tuple: numba takes it as is)."""

    momentum: float
    beta1: float
    beta2: float
    alpha: float
    eps: float


Value = TypeVar("Value", float, FloatArray)
"""A rule's operands: scalars in the compiled kernel, arrays (broadcast over rows and inputs) in numpy."""

SlotIndex = tuple[int, ...]
"""Where a rule reads its state: ``slots[(s,) + at]`` is slot ``s`` at ``at`` (``()``: the whole arrays)."""


def sgd_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
             constants: RuleConstants) -> Value:
    """``w - s g``."""
    return param - step_size * grad


def momentum_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
                  constants: RuleConstants) -> Value:
    """``buf = mu buf + g``; ``w - s buf``."""
    slot = (0,) + at  # noqa: RUF005 - numba compiles no starred tuple display
    buffer = constants.momentum * slots[slot] + grad
    slots[slot] = buffer
    result: Value = param - step_size * buffer
    return result


def nesterov_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
                  constants: RuleConstants) -> Value:
    """``buf = mu buf + g``; ``w - s (g + mu buf)``."""
    slot = (0,) + at  # noqa: RUF005 - numba compiles no starred tuple display
    buffer = constants.momentum * slots[slot] + grad
    slots[slot] = buffer
    result: Value = param - step_size * (grad + constants.momentum * buffer)
    return result


def adagrad_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
                 constants: RuleConstants) -> Value:
    """``G += g**2``; ``w - s g / (sqrt(G) + eps)``."""
    slot = (0,) + at  # noqa: RUF005 - numba compiles no starred tuple display
    sum_sq = slots[slot] + grad * grad
    slots[slot] = sum_sq
    result: Value = param - step_size * grad / (np.sqrt(sum_sq) + constants.eps)
    return result


def rmsprop_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
                 constants: RuleConstants) -> Value:
    """``v = alpha v + (1 - alpha) g**2``; ``w - s g / (sqrt(v) + eps)``."""
    slot = (0,) + at  # noqa: RUF005 - numba compiles no starred tuple display
    square_avg = constants.alpha * slots[slot] + (1.0 - constants.alpha) * (grad * grad)
    slots[slot] = square_avg
    result: Value = param - step_size * grad / (np.sqrt(square_avg) + constants.eps)
    return result


def adam_rule(param: Value, grad: Value, step_size: Value, step: Value, slots: FloatArray, at: SlotIndex,
              constants: RuleConstants) -> Value:
    """``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``;
    ``w - s / (1 - b1**n) * m / (sqrt(v) / sqrt(1 - b2**n) + eps)`` at step ``n``."""
    first, second = (0,) + at, (1,) + at  # noqa: RUF005 - numba compiles no starred tuple display
    exp_avg = constants.beta1 * slots[first] + (1.0 - constants.beta1) * grad
    exp_avg_sq = constants.beta2 * slots[second] + (1.0 - constants.beta2) * (grad * grad)
    slots[first] = exp_avg
    slots[second] = exp_avg_sq
    bias_correction1 = 1.0 - constants.beta1**step
    bias_correction2 = 1.0 - constants.beta2**step
    denominator = np.sqrt(exp_avg_sq) / np.sqrt(bias_correction2) + constants.eps
    result: Value = param - (step_size / bias_correction1) * exp_avg / denominator
    return result


UpdateRule = Callable[[Value, Value, Value, Value, FloatArray, SlotIndex, RuleConstants], Value]
"""``rule(w, g, s, n, slots, at, constants) -> w'``: one optimizer's step, elementwise, its state updated in
place in ``slots`` ``(S, ...)`` at ``at``. Written with arithmetic and ``np.sqrt`` only, so the same function
runs on numpy arrays (:func:`apply_update`) and, compiled, on scalars (:mod:`pipelines.sgd.fused`)."""

UPDATE_RULES: dict[str, UpdateRule[Any]] = {
    "sgd": sgd_rule, "momentum": momentum_rule, "nesterov": nesterov_rule, "adagrad": adagrad_rule,
    "rmsprop": rmsprop_rule, "adam": adam_rule, "adamw": adam_rule,
}
"""Each optimizer's rule (``adamw`` is ``adam`` after its decoupled decay)."""


def stacked_slots(slots: dict[str, FloatArray], names: tuple[str, ...], shape: tuple[int, ...]) -> FloatArray:
    """The slots ``names`` as one array ``(S, *shape)`` (a copy), the form the update rules take."""
    return np.stack([slots[name] for name in names]) if names else np.zeros((0, *shape))


def apply_update(
    spec: OptimizerSpec,
    state: OptimizerState,
    weights: FloatArray,
    intercepts: FloatArray,
    grad_w: FloatArray,
    grad_b: FloatArray,
    step_sizes: FloatArray,
    regularization: Regularization | Penalties,
) -> tuple[FloatArray, FloatArray]:
    """One optimizer step for all K rows; advances ``state`` in place.

    Parameters
    ----------
    spec : OptimizerSpec
    state : OptimizerState
        Updated in place (slots replaced, ``step`` incremented for every row).
    weights : ndarray of shape (K, d)
    intercepts : ndarray of shape (K,)
    grad_w : ndarray of shape (K, d)
        Gradient of the mean data loss (no penalty) in the weights.
    grad_b : ndarray of shape (K,)
        Gradient of the mean data loss in the intercepts.
    step_sizes : ndarray of shape (K,)
        ``learning_rates * schedule multiplier``, per row.
    regularization : Regularization or Penalties
        One penalty for every row, or each row's own.

    Returns
    -------
    weights : ndarray of shape (K, d)
        New array; the input is not modified.
    intercepts : ndarray of shape (K,)
        New array; the input is not modified.
    """
    penalties = as_penalties(regularization, weights.shape[0])
    names = SLOT_NAMES[spec.name]
    weight_slots = stacked_slots(state.weight_slots, names, weights.shape)
    intercept_slots = stacked_slots(state.intercept_slots, names, intercepts.shape)
    state.step = state.step + 1
    steps = state.step.astype(np.float64)
    new_weights, new_intercepts = update_rows(spec, weight_slots, intercept_slots, steps, weights, intercepts,
                                              grad_w, grad_b, step_sizes, penalties)
    for index, name in enumerate(names):
        state.weight_slots[name], state.intercept_slots[name] = weight_slots[index], intercept_slots[index]
    return new_weights, new_intercepts


def update_rows(spec: OptimizerSpec, weight_slots: FloatArray, intercept_slots: FloatArray, steps: FloatArray,
                weights: FloatArray, intercepts: FloatArray, grad_w: FloatArray, grad_b: FloatArray,
                step_sizes: FloatArray, penalties: Penalties) -> tuple[FloatArray, FloatArray]:
    """:func:`apply_update` on stacked slots ``(S, K, d)`` / ``(S, K)`` (updated in place) at the rows' steps
    ``steps`` ``(K,)`` (this update's, 1-based): the penalty's terms around ``spec``'s rule."""
    rule, constants = spec.rule, spec.constants
    if spec.decoupled_decay:
        weights = penalties.decay(weights, step_sizes)
    else:
        grad_w = penalties.add_smooth_gradient(grad_w, weights)
    new_weights = rule(weights, grad_w, step_sizes[:, np.newaxis], steps[:, np.newaxis], weight_slots, (), constants)
    new_intercepts = rule(intercepts, grad_b, step_sizes, steps, intercept_slots, (), constants)
    return penalties.proximal(new_weights, step_sizes), new_intercepts
