"""Reference trainers: MLlib's GradientDescent updaters and scikit-learn's optima."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from pipelines.sgd._types import FloatArray
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.reference import objective, reference_gradient_descent, reference_minibatch_sgd
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec

Data = tuple[FloatArray, FloatArray]


def _mllib_gradient_descent(
    X: FloatArray, y: FloatArray, step_size: float, reg_param: float, updater: str, iterations: int, loss: str
) -> tuple[FloatArray, list[float]]:
    """MLlib GradientDescent.runMiniBatchSGD (fraction 1) with Simple/SquaredL2/L1Updater, one model."""

    def update(weights: FloatArray, gradient: FloatArray, iteration: int) -> tuple[FloatArray, float]:
        this_step = step_size / math.sqrt(iteration)
        if updater == "simple":
            return weights - this_step * gradient, 0.0
        if updater == "l2":
            new_weights = weights * (1.0 - this_step * reg_param) - this_step * gradient
            return new_weights, 0.5 * reg_param * float(np.linalg.norm(new_weights)) ** 2
        shrinkage = reg_param * this_step
        stepped = weights - this_step * gradient
        new_weights = np.sign(stepped) * np.maximum(np.abs(stepped) - shrinkage, 0.0)
        return new_weights, reg_param * float(np.abs(new_weights).sum())

    weights = np.zeros(X.shape[1])
    reg_value = 0.0  # MLlib's initial compute(w0, zeros, 0, 1, reg)._2 is 0 for w0 = 0 with every updater
    loss_history = []
    for iteration in range(1, iterations + 1):
        gradient_sum, loss_sum = np.zeros_like(weights), 0.0
        for features, label in zip(X, y, strict=True):
            margin = float(features @ weights)
            if loss == "squared":
                diff = margin - label
                gradient_sum += diff * features
                loss_sum += diff * diff / 2.0
            else:
                multiplier = 1.0 / (1.0 + math.exp(-margin)) - label
                gradient_sum += multiplier * features
                loss_sum += math.log1p(math.exp(-margin)) if label > 0 else math.log1p(math.exp(margin))
        loss_history.append(loss_sum / X.shape[0] + reg_value)
        weights, reg_value = update(weights, gradient_sum / X.shape[0], iteration)
    return weights, loss_history


@pytest.mark.parametrize(
    ("updater", "l1_ratio", "loss"),
    [("simple", 0.0, "squared"), ("l2", 0.0, "squared"), ("l1", 1.0, "squared"), ("l2", 0.0, "logistic")],
)
def test_gradient_descent_reproduces_mllib_updaters(
    updater: str, l1_ratio: float, loss: str, regression_data: Data, classification_data: Data
) -> None:
    X, y = regression_data if loss == "squared" else classification_data
    X, y = X[:120], y[:120]
    reg_param = 0.0 if updater == "simple" else 0.1
    step_sizes = np.array([0.1, 0.7])
    weights, intercepts, loss_history = reference_gradient_descent(
        TrainingProblem(loss, False, Regularization(reg_param, l1_ratio), OptimizerSpec("sgd"),
                        ScheduleSpec("inv_sqrt")),
        X, y, step_sizes,
        iterations=15,
    )
    np.testing.assert_array_equal(intercepts, [0.0, 0.0])
    assert loss_history.shape == (15, 2)
    for k, step_size in enumerate(step_sizes):
        expected_weights, expected_history = _mllib_gradient_descent(
            X, y, step_size, reg_param, updater, 15, loss
        )
        np.testing.assert_allclose(weights[k], expected_weights, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(loss_history[:, k], expected_history, rtol=1e-10)


def test_gradient_descent_history_is_the_objective_before_each_step(regression_data: Data) -> None:
    X, y = regression_data
    regularization = Regularization(0.05, 0.5)
    one_step = reference_gradient_descent(
        TrainingProblem("squared", True, regularization, OptimizerSpec("momentum"), ScheduleSpec()),
        X, y, np.array([0.1]),
        iterations=1,
    )
    two_steps = reference_gradient_descent(
        TrainingProblem("squared", True, regularization, OptimizerSpec("momentum"), ScheduleSpec()),
        X, y, np.array([0.1]),
        iterations=2,
    )
    assert two_steps[2][0, 0] == pytest.approx(0.5 * np.mean(y**2), rel=1e-14)
    expected = objective(TrainingProblem("squared", regularization=regularization), X, y, one_step[0], one_step[1])
    assert two_steps[2][1, 0] == pytest.approx(expected[0], rel=1e-14)


def _sklearn_logistic_objective(X: FloatArray, y: FloatArray, reg_param: float) -> float:
    model = LogisticRegression(C=1.0 / (reg_param * X.shape[0]), tol=1e-12, max_iter=10_000)
    model.fit(X, y)
    problem = TrainingProblem("logistic", regularization=Regularization(reg_param))
    return float(objective(problem, X, y, model.coef_, model.intercept_)[0])


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("reg_param", [1e-8, 0.01])
def test_best_rate_reaches_sklearn_logistic_optimum(
    optimizer_name: str, reg_param: float, classification_data: Data
) -> None:
    X, y = classification_data
    regularization = Regularization(reg_param)
    learning_rates = np.array([0.001, 0.01, 0.1, 0.5])
    _, _, history = reference_minibatch_sgd(
        TrainingProblem("logistic", True, regularization, OptimizerSpec(optimizer_name), ScheduleSpec("cosine")),
        X, y, learning_rates,
        epochs=30, batch_size=32, seed=3,
    )
    assert history.shape == (30, 4)
    optimum = _sklearn_logistic_objective(X, y, reg_param)
    assert history[-1].min() <= optimum * 1.01
    assert history[-1].min() >= optimum * (1 - 1e-9)


def test_best_rate_reaches_least_squares_optimum(regression_data: Data) -> None:
    X, y = regression_data
    model = LinearRegression().fit(X, y)
    optimum = float(
        objective(TrainingProblem("squared"), X, y, model.coef_[None, :], np.array([model.intercept_]))[0]
    )
    _, _, history = reference_minibatch_sgd(
        TrainingProblem("squared", True, Regularization(), OptimizerSpec("sgd"), ScheduleSpec("cosine")),
        X, y, np.array([0.003, 0.03, 0.1, 0.3]),
        epochs=20, batch_size=16, seed=5,
    )
    assert optimum * (1 - 1e-9) <= history[-1].min() <= optimum * 1.01
