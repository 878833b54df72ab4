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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

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
    state.step = state.step + 1
    steps = state.step.astype(np.float64)
    weight_step_sizes = step_sizes[:, np.newaxis]
    if spec.name == "adamw":
        weights = penalties.decay(weights, step_sizes)
    else:
        grad_w = penalties.add_smooth_gradient(grad_w, weights)
    new_weights = _descend(spec, state.weight_slots, weights, grad_w, weight_step_sizes, steps[:, np.newaxis])
    new_intercepts = _descend(spec, state.intercept_slots, intercepts, grad_b, step_sizes, steps)
    return penalties.proximal(new_weights, step_sizes), new_intercepts


def _descend(
    spec: OptimizerSpec,
    slots: dict[str, FloatArray],
    params: FloatArray,
    grads: FloatArray,
    step_sizes: FloatArray,
    steps: FloatArray,
) -> FloatArray:
    """Apply ``spec``'s rule elementwise; ``step_sizes`` and ``steps`` broadcast to ``params``."""
    name = spec.name
    result: FloatArray
    if name == "sgd":
        result = params - step_sizes * grads
    elif name in ("momentum", "nesterov"):
        buffer = spec.momentum * slots["momentum_buffer"] + grads
        slots["momentum_buffer"] = buffer
        direction = grads + spec.momentum * buffer if name == "nesterov" else buffer
        result = params - step_sizes * direction
    elif name == "adagrad":
        sum_sq = slots["sum_sq"] + grads * grads
        slots["sum_sq"] = sum_sq
        result = params - step_sizes * grads / (np.sqrt(sum_sq) + spec.resolved_eps)
    elif name == "rmsprop":
        square_avg = spec.alpha * slots["square_avg"] + (1.0 - spec.alpha) * (grads * grads)
        slots["square_avg"] = square_avg
        result = params - step_sizes * grads / (np.sqrt(square_avg) + spec.resolved_eps)
    else:  # adam, adamw
        exp_avg = spec.beta1 * slots["exp_avg"] + (1.0 - spec.beta1) * grads
        exp_avg_sq = spec.beta2 * slots["exp_avg_sq"] + (1.0 - spec.beta2) * (grads * grads)
        slots["exp_avg"] = exp_avg
        slots["exp_avg_sq"] = exp_avg_sq
        bias_correction1 = 1.0 - spec.beta1**steps
        bias_correction2 = 1.0 - spec.beta2**steps
        denominator = np.sqrt(exp_avg_sq) / np.sqrt(bias_correction2) + spec.resolved_eps
        result = params - (step_sizes / bias_correction1) * exp_avg / denominator
    return result
