"""Optimizers against an independent scalar loop, one row and one coordinate at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sgd.optimizers import (
    OPTIMIZER_NAMES,
    OptimizerSpec,
    OptimizerState,
    apply_update,
    init_state,
)
from pipelines.sgd.regularization import Regularization


def _scalar_step(
    name: str, slots: dict[str, float], param: float, grad: float, lr: float, step: int
) -> float:
    """PyTorch's per-parameter update (defaults), written as scalar code."""
    if name == "sgd":
        return param - lr * grad
    if name in ("momentum", "nesterov"):
        buf = 0.9 * slots.get("buf", 0.0) + grad
        slots["buf"] = buf
        return param - lr * (grad + 0.9 * buf if name == "nesterov" else buf)
    if name == "adagrad":
        slots["sum"] = slots.get("sum", 0.0) + grad * grad
        return param - lr * grad / (math.sqrt(slots["sum"]) + 1e-10)
    if name == "rmsprop":
        slots["sq"] = 0.99 * slots.get("sq", 0.0) + 0.01 * grad * grad
        return param - lr * grad / (math.sqrt(slots["sq"]) + 1e-8)
    slots["m"] = 0.9 * slots.get("m", 0.0) + 0.1 * grad
    slots["v"] = 0.999 * slots.get("v", 0.0) + 0.001 * grad * grad
    m_hat_scale = 1 - 0.9**step
    v_hat_scale = 1 - 0.999**step
    return param - lr / m_hat_scale * slots["m"] / (math.sqrt(slots["v"]) / math.sqrt(v_hat_scale) + 1e-8)


def _scalar_run(
    name: str,
    weights: np.ndarray,
    intercepts: np.ndarray,
    grads_w: list[np.ndarray],
    grads_b: list[np.ndarray],
    lrs: list[np.ndarray],
    reg_param: float,
    l1_ratio: float,
) -> tuple[np.ndarray, np.ndarray]:
    weights = weights.copy()
    intercepts = intercepts.copy()
    n_models, n_features = weights.shape
    l2 = reg_param * (1 - l1_ratio)
    l1 = reg_param * l1_ratio
    for k in range(n_models):
        weight_slots: list[dict[str, float]] = [{} for _ in range(n_features)]
        intercept_slots: dict[str, float] = {}
        for step, (grad_w, grad_b, lr) in enumerate(zip(grads_w, grads_b, lrs, strict=True), start=1):
            for j in range(n_features):
                w = weights[k, j]
                if name == "adamw":
                    w = w * (1 - lr[k] * l2)
                    g = grad_w[k, j]
                else:
                    g = grad_w[k, j] + l2 * w
                w = _scalar_step(name, weight_slots[j], w, g, lr[k], step)
                threshold = lr[k] * l1
                weights[k, j] = math.copysign(max(abs(w) - threshold, 0.0), w) if l1 else w
            intercepts[k] = _scalar_step(name, intercept_slots, intercepts[k], grad_b[k], lr[k], step)
    return weights, intercepts


@pytest.mark.parametrize(("reg_param", "l1_ratio"), [(0.0, 0.0), (0.05, 0.0), (0.05, 0.4), (0.05, 1.0)])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_apply_update_matches_scalar_loop(name: str, reg_param: float, l1_ratio: float) -> None:
    rng = np.random.default_rng(3)
    n_models, n_features, n_steps = 3, 4, 6
    weights = rng.standard_normal((n_models, n_features))
    intercepts = rng.standard_normal(n_models)
    grads_w = [rng.standard_normal((n_models, n_features)) for _ in range(n_steps)]
    grads_b = [rng.standard_normal(n_models) for _ in range(n_steps)]
    lrs = [rng.uniform(0.01, 0.2, n_models) for _ in range(n_steps)]
    spec = OptimizerSpec(name)
    regularization = Regularization(reg_param, l1_ratio)
    state = init_state(spec, n_models, n_features)
    new_weights, new_intercepts = weights, intercepts
    for grad_w, grad_b, lr in zip(grads_w, grads_b, lrs, strict=True):
        new_weights, new_intercepts = apply_update(
            spec, state, new_weights, new_intercepts, grad_w, grad_b, lr, regularization
        )
    expected_weights, expected_intercepts = _scalar_run(
        name, weights, intercepts, grads_w, grads_b, lrs, reg_param, l1_ratio
    )
    np.testing.assert_allclose(new_weights, expected_weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new_intercepts, expected_intercepts, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(state.step, [n_steps] * n_models)


def test_sgd_with_l2_is_mllib_squared_l2_updater() -> None:
    rng = np.random.default_rng(4)
    weights, grad = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    step_sizes = np.array([0.1, 0.3])
    spec = OptimizerSpec("sgd")
    new_weights, _ = apply_update(
        spec, init_state(spec, 2, 5), weights, np.zeros(2), grad, np.zeros(2), step_sizes, Regularization(0.2)
    )
    mllib = weights * (1 - step_sizes[:, None] * 0.2) - step_sizes[:, None] * grad
    np.testing.assert_allclose(new_weights, mllib, rtol=1e-14, atol=1e-15)


def test_apply_update_does_not_modify_its_inputs() -> None:
    weights, intercepts = np.ones((2, 3)), np.ones(2)
    spec = OptimizerSpec("adam")
    apply_update(
        spec,
        init_state(spec, 2, 3),
        weights,
        intercepts,
        weights,
        intercepts,
        np.ones(2),
        Regularization(0.1),
    )
    np.testing.assert_array_equal(weights, np.ones((2, 3)))
    np.testing.assert_array_equal(intercepts, np.ones(2))


def _advanced_state(name: str, seed: int, n_steps: int) -> OptimizerState:
    rng = np.random.default_rng(seed)
    spec = OptimizerSpec(name)
    state = init_state(spec, 3, 2)
    weights, intercepts = np.zeros((3, 2)), np.zeros(3)
    for _ in range(n_steps):
        weights, intercepts = apply_update(
            spec,
            state,
            weights,
            intercepts,
            rng.standard_normal((3, 2)),
            rng.standard_normal(3),
            np.full(3, 0.1),
            Regularization(),
        )
    return state


def test_state_select_and_round_trip() -> None:
    first = _advanced_state("adam", 1, 2)
    selected = first.select(np.array([2, 0]))
    np.testing.assert_array_equal(selected.weight_slots["exp_avg"], first.weight_slots["exp_avg"][[2, 0]])
    np.testing.assert_array_equal(
        selected.intercept_slots["exp_avg_sq"], first.intercept_slots["exp_avg_sq"][[2, 0]]
    )

    restored = OptimizerState.from_arrays(first.to_arrays())
    assert restored.to_arrays().keys() == first.to_arrays().keys()
    for key, value in first.to_arrays().items():
        np.testing.assert_array_equal(restored.to_arrays()[key], value)


def test_eps_default_is_the_optimizers_own() -> None:
    assert OptimizerSpec("adagrad").resolved_eps == 1e-10  # PyTorch's Adagrad default, stated once
    assert OptimizerSpec("adam").resolved_eps == 1e-8
    assert OptimizerSpec("adagrad", eps=1e-6).resolved_eps == 1e-6


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"name": "lbfgs"}, "name = 'lbfgs': must be one of sgd, momentum"),
        ({"momentum": 1.0}, r"momentum = 1.0: must be a number in \[0, 1\)"),
        ({"beta2": -0.1}, r"beta2 = -0.1: must be a number in \[0, 1\)"),
        ({"eps": 0.0}, r"eps = 0.0: must be a number > 0 \(or null for the default\)"),
    ],
)
def test_invalid_optimizer_parameters_are_rejected(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerSpec(**parameters)  # type: ignore[arg-type]
