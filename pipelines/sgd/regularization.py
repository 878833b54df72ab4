"""Elastic-net penalty on the weights (never on the intercept).

For model row ``k`` the penalty is

    R(w_k) = reg_param * (l1_ratio * ||w_k||_1 + (1 - l1_ratio) / 2 * ||w_k||_2^2)

The smooth L2 part enters the gradient (:meth:`Regularization.smooth_gradient`);
the L1 part is applied only by the proximal step (soft-thresholding) after each
update, as Spark MLlib's ``L1Updater`` does. With ``l1_ratio = 0`` this is MLlib's
``SquaredL2Updater`` penalty ``reg_param / 2 * ||w||^2``; with ``l1_ratio = 1`` it is
``L1Updater``'s ``reg_param * ||w||_1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipelines.sgd._types import FloatArray
from pipelines.sgd._validation import Interval, Rule, check_rules


@dataclass(frozen=True)
class Regularization:
    """Elastic-net penalty strength and mix.

    Parameters
    ----------
    reg_param : float
        Overall strength, ``>= 0``. ``0`` disables regularization.
    l1_ratio : float
        Share of the L1 term, ``0 <= l1_ratio <= 1``.
    """

    reg_param: float = 0.0
    l1_ratio: float = 0.0

    RULES: ClassVar[dict[str, Rule]] = {"reg_param": Interval(0, None), "l1_ratio": Interval(0, 1)}
    """One rule per parameter, applied at construction (``model.reg_param``, ``model.l1_ratio``)."""

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)

    @property
    def l2_strength(self) -> float:
        """Coefficient of ``w`` in the smooth gradient: ``reg_param * (1 - l1_ratio)``."""
        return self.reg_param * (1.0 - self.l1_ratio)

    @property
    def l1_strength(self) -> float:
        """Coefficient of ``||w||_1`` in the penalty: ``reg_param * l1_ratio``."""
        return self.reg_param * self.l1_ratio

    def penalty(self, weights: FloatArray) -> FloatArray:
        """Penalty value per model row.

        Parameters
        ----------
        weights : ndarray of shape (K, d)

        Returns
        -------
        ndarray of shape (K,)
            ``l1_strength * ||w_k||_1 + l2_strength / 2 * ||w_k||_2^2``.
        """
        l1_norms = np.abs(weights).sum(axis=1)
        squared_l2_norms = np.einsum("kd,kd->k", weights, weights)
        result: FloatArray = self.l1_strength * l1_norms + 0.5 * self.l2_strength * squared_l2_norms
        return result

    def smooth_gradient(self, weights: FloatArray) -> FloatArray:
        """Gradient of the L2 part, ``reg_param * (1 - l1_ratio) * w``, shape ``(K, d)``."""
        result: FloatArray = self.l2_strength * weights
        return result

    def proximal(self, weights: FloatArray, step_sizes: FloatArray) -> FloatArray:
        """Soft-threshold each row by ``step_sizes[k] * reg_param * l1_ratio``.

        ``prox(w)_kj = sign(w_kj) * max(|w_kj| - step_sizes[k] * l1_strength, 0)``.

        Parameters
        ----------
        weights : ndarray of shape (K, d)
        step_sizes : ndarray of shape (K,)

        Returns
        -------
        ndarray of shape (K, d)
            ``weights`` itself (not a copy) when ``l1_strength == 0``.
        """
        if self.l1_strength == 0.0:
            return weights
        thresholds = (step_sizes * self.l1_strength)[:, np.newaxis]
        result: FloatArray = np.sign(weights) * np.maximum(np.abs(weights) - thresholds, 0.0)
        return result
