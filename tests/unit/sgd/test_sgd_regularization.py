"""Elastic-net penalty, its smooth gradient and the L1 proximal step."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.sgd.regularization import Regularization

WEIGHTS = np.array([[0.5, -2.0, 0.01], [0.0, 3.0, -0.2]])


def test_penalty_matches_elastic_net_formula() -> None:
    regularization = Regularization(reg_param=0.3, l1_ratio=0.25)
    expected = [0.3 * (0.25 * np.abs(row).sum() + 0.75 / 2 * (row**2).sum()) for row in WEIGHTS]
    np.testing.assert_allclose(regularization.penalty(WEIGHTS), expected, rtol=1e-15)


def test_smooth_gradient_is_the_l2_part_only() -> None:
    regularization = Regularization(reg_param=0.3, l1_ratio=0.25)
    np.testing.assert_allclose(regularization.smooth_gradient(WEIGHTS), 0.3 * 0.75 * WEIGHTS, rtol=1e-15)


def test_proximal_soft_thresholds_each_row_by_its_step_size() -> None:
    regularization = Regularization(reg_param=2.0, l1_ratio=0.5)
    step_sizes = np.array([0.1, 1.0])  # thresholds 0.1 and 1.0
    expected = np.array([[0.4, -1.9, 0.0], [0.0, 2.0, 0.0]])
    np.testing.assert_allclose(regularization.proximal(WEIGHTS, step_sizes), expected, rtol=1e-15)


def test_proximal_is_identity_without_l1() -> None:
    assert Regularization(reg_param=2.0, l1_ratio=0.0).proximal(WEIGHTS, np.ones(2)) is WEIGHTS


@pytest.mark.parametrize(
    ("reg_param", "l1_ratio", "message"),
    [(-0.1, 0.0, "reg_param = -0.1: must be a number >= 0"),
     (0.1, 1.5, r"l1_ratio = 1.5: must be a number in \[0, 1\]"),
     (float("inf"), 0.0, "reg_param = inf: must be a number >= 0")],
)
def test_invalid_parameters_are_rejected(reg_param: float, l1_ratio: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Regularization(reg_param, l1_ratio)
