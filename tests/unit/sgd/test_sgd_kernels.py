"""Block kernels: gradient sums, and the mini-batch epoch's K-independence and determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import SplitDesign, take_rows
from pipelines.sgd.kernels import Block, EpochPlan, Models, batches_per_epoch, epoch_permutation, minibatch_epoch
from pipelines.sgd.losses import LOSS_NAMES, LOSS_TASKS
from pipelines.sgd.optimizers import OPTIMIZER_NAMES, OptimizerSpec, OptimizerState, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import StepSchedule

Data = tuple[FloatArray, FloatArray]


def _data(loss_name: str, regression_data: Data, classification_data: Data) -> Data:
    return regression_data if loss_name == "squared" else classification_data


def _epoch(X: FloatArray, y: FloatArray, models: Models, loss_name: str, optimizer: OptimizerSpec,
           learning_rates: FloatArray, **plan: Any) -> tuple[Models, int]:
    """``minibatch_epoch`` of a problem's kernel; ``plan``: the :class:`EpochPlan` fields after the rates."""
    problem = TrainingProblem(loss_name, optimizer=optimizer, n_classes=plan.pop("n_classes", 2))
    regularization = plan.pop("regularization", Regularization())
    return minibatch_epoch(Block(X, y), models, EpochPlan(problem.kernel(X), learning_rates,
                                                          regularization.rows(learning_rates.size), **plan))


@pytest.mark.parametrize("loss_name", [name for name in LOSS_NAMES if name != "multinomial"])
def test_batch_gradients_are_sums_of_per_sample_gradients(
    loss_name: str, regression_data: Data, classification_data: Data
) -> None:
    X, y = _data(loss_name, regression_data, classification_data)
    X, y = X[:50], y[:50]
    rng = np.random.default_rng(5)
    weights, intercepts = rng.standard_normal((3, X.shape[1])), rng.standard_normal(3)
    kernel = TrainingProblem(loss_name).kernel(X)
    grad_w_sum, grad_b_sum, loss_sum = kernel.gradient_sums(Block(X, y), weights, intercepts)
    loss = kernel.loss
    for k in range(3):
        expected_w, expected_b, expected_loss = np.zeros(X.shape[1]), 0.0, 0.0
        for i in range(X.shape[0]):
            margin = np.array([[X[i] @ weights[k] + intercepts[k]]])
            derivative = float(loss.derivative(margin, y[i : i + 1])[0, 0])
            expected_w += derivative * X[i]
            expected_b += derivative
            expected_loss += float(loss.value(margin, y[i : i + 1])[0, 0])
        np.testing.assert_allclose(grad_w_sum[k], expected_w, rtol=1e-12, atol=1e-12)
        assert grad_b_sum[k] == pytest.approx(expected_b, rel=1e-12, abs=1e-12)
        assert loss_sum[k] == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(kernel.loss_sums(Block(X, y), weights, intercepts), loss_sum, rtol=1e-15)


def _run_epochs(
    X: FloatArray,
    y: FloatArray,
    learning_rates: FloatArray,
    optimizer: OptimizerSpec,
    loss_name: str,
    n_epochs: int = 2,
    fit_intercept: bool = True,
) -> tuple[FloatArray, FloatArray, OptimizerState, int]:
    n_models = learning_rates.shape[0]
    weights, intercepts = np.zeros((n_models, X.shape[1])), np.zeros(n_models)
    models = Models(weights, intercepts, init_state(optimizer, n_models, X.shape[1]))
    steps_taken = 0
    for epoch in range(n_epochs):
        models, steps_taken = _epoch(
            X, y, models, loss_name, optimizer, learning_rates, regularization=Regularization(0.01, 0.3),
            schedule=StepSchedule("warmup_cosine", warmup_steps=5), total_steps=n_epochs * math.ceil(X.shape[0] / 64),
            batch_size=64, seed=11, epoch=epoch, fit_intercept=fit_intercept)
    return models.weights, models.intercepts, models.state, steps_taken


@pytest.mark.parametrize("loss_name", [name for name in LOSS_NAMES if name != "multinomial"])
@pytest.mark.parametrize("optimizer_name", OPTIMIZER_NAMES)
def test_k_rates_at_once_equal_k_separate_runs(
    optimizer_name: str, loss_name: str, regression_data: Data, classification_data: Data
) -> None:
    X, y = _data(loss_name, regression_data, classification_data)
    learning_rates = np.array([0.003, 0.03, 0.1])
    optimizer = OptimizerSpec(optimizer_name)
    weights, intercepts, state, steps_taken = _run_epochs(X, y, learning_rates, optimizer, loss_name)
    assert steps_taken == math.ceil(X.shape[0] / 64)
    np.testing.assert_array_equal(state.step, [2 * steps_taken] * 3)
    for k, rate in enumerate(learning_rates):
        single_weights, single_intercepts, _, _ = _run_epochs(X, y, np.array([rate]), optimizer, loss_name)
        np.testing.assert_allclose(weights[k], single_weights[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(intercepts[k], single_intercepts[0], rtol=1e-12, atol=1e-14)


def test_minibatch_epoch_is_bit_for_bit_deterministic(classification_data: Data) -> None:
    X, y = classification_data
    learning_rates = np.array([0.01, 0.1])
    first = _run_epochs(X, y, learning_rates, OptimizerSpec("adam"), "logistic")
    second = _run_epochs(X, y, learning_rates, OptimizerSpec("adam"), "logistic")
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    for key, value in first[2].to_arrays().items():
        np.testing.assert_array_equal(second[2].to_arrays()[key], value)


def test_epoch_number_changes_the_row_order(regression_data: Data) -> None:
    X, y = regression_data
    optimizer = OptimizerSpec("sgd")
    start = Models(np.zeros((1, X.shape[1])), np.zeros(1), init_state(optimizer, 1, X.shape[1]))
    results = [
        _epoch(X, y, start, "squared", optimizer, np.array([0.05]), schedule=StepSchedule(), total_steps=10,
               batch_size=32, seed=1, epoch=epoch)[0].weights
        for epoch in (0, 1)
    ]
    assert not np.array_equal(results[0], results[1])


def test_inputs_are_not_modified_and_fit_intercept_false_keeps_zero(regression_data: Data) -> None:
    X, y = regression_data
    X_before, y_before = X.copy(), y.copy()
    weights, intercepts, _, _ = _run_epochs(
        X, y, np.array([0.05]), OptimizerSpec("adam"), "squared", fit_intercept=False
    )
    np.testing.assert_array_equal(intercepts, [0.0])
    assert np.abs(weights).sum() > 0
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def test_one_batch_per_epoch_is_a_gradient_descent_step(regression_data: Data) -> None:
    X, y = regression_data
    rng = np.random.default_rng(8)
    weights, intercepts = rng.standard_normal((2, X.shape[1])), rng.standard_normal(2)
    optimizer = OptimizerSpec("sgd")
    learning_rates = np.array([0.1, 0.5])
    trained, steps_taken = _epoch(X, y, Models(weights, intercepts, init_state(optimizer, 2, X.shape[1])), "squared",
                                  optimizer, learning_rates, schedule=StepSchedule(), total_steps=1,
                                  batch_size=10_000, seed=0, epoch=0)
    new_weights, new_intercepts = trained.weights, trained.intercepts
    grad_w_sum, grad_b_sum, _ = TrainingProblem("squared").kernel(X).gradient_sums(Block(X, y), weights, intercepts)
    assert steps_taken == 1
    n_rows = X.shape[0]
    np.testing.assert_allclose(
        new_weights, weights - learning_rates[:, None] * grad_w_sum / n_rows, rtol=1e-12
    )
    np.testing.assert_allclose(new_intercepts, intercepts - learning_rates * grad_b_sum / n_rows, rtol=1e-12)


def test_minibatch_epoch_rejects_mismatched_shapes(regression_data: Data) -> None:
    X, y = regression_data
    optimizer = OptimizerSpec("sgd")
    start = Models(np.zeros((2, X.shape[1])), np.zeros(2), init_state(optimizer, 2, X.shape[1]))
    with pytest.raises(ValueError, match=r"learning_rates must have shape \(2,\)"):
        minibatch_epoch(Block(X, y), start,
                        EpochPlan(TrainingProblem("squared").kernel(X), np.array([0.1]), Regularization().rows(2),
                                  StepSchedule(), total_steps=1, batch_size=8, seed=0, epoch=0))


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_multinomial_models_of_a_grid_train_bit_for_bit_as_alone(optimizer_name: str,
                                                                   classification_data: Data) -> None:
    """K multinomial models of C = 3 classes (K * C weight rows, model-major) in one minibatch_epoch: each
    model's C rows equal that model trained alone, byte for byte."""
    X, _ = classification_data
    y = (np.arange(X.shape[0]) % 3).astype(np.float64)
    C, rates = 3, np.array([0.01, 0.1, 0.5])
    optimizer = OptimizerSpec(optimizer_name)

    def train(model_rates: FloatArray) -> tuple[FloatArray, FloatArray]:
        rows = model_rates.shape[0] * C
        models = Models(np.zeros((rows, X.shape[1])), np.zeros(rows), init_state(optimizer, rows, X.shape[1]))
        for epoch in range(2):
            models, _ = _epoch(X, y, models, "multinomial", optimizer, np.repeat(model_rates, C), n_classes=C,
                               regularization=Regularization(0.01, 0.3), schedule=StepSchedule("constant"),
                               total_steps=26, batch_size=64, seed=11, epoch=epoch)
        return models.weights, models.intercepts

    weights, intercepts = train(rates)
    for k, rate in enumerate(rates):
        alone_weights, alone_intercepts = train(np.array([rate]))
        assert weights[k * C : (k + 1) * C].tobytes() == alone_weights.tobytes()
        assert intercepts[k * C : (k + 1) * C].tobytes() == alone_intercepts.tobytes()
    kernel = TrainingProblem("multinomial", n_classes=C).kernel(X)
    grad_w, grad_b, loss_sum = kernel.gradient_sums(Block(X, y), weights, intercepts)
    assert grad_w.shape == weights.shape and grad_b.shape == (3 * C,) and loss_sum.shape == (3,)


def _progressive_case(case: str, regression_data: Data, classification_data: Data) -> tuple[Block, TrainingProblem]:
    """A block and problem of one kind: ``<loss>`` on dense inputs (the compiled kernel, rows weighted), ``sparse``
    (a split design: the sparse kernel) or ``multinomial`` (the numpy kernel)."""
    X, y = regression_data if LOSS_TASKS.get(case) in ("regression", "count") else classification_data
    if case == "poisson":
        y = np.floor(np.exp(0.3 * X[:, 0] + 0.2 * X[:, 1]))
    sample_weight = np.random.default_rng(4).uniform(0.0, 2.0, y.size)
    if case == "sparse":
        return Block(SplitDesign(X[:, :2].copy(), sp.csr_matrix(np.where(X[:, 2:] > 0.5, X[:, 2:], 0.0))), y,
                     sample_weight), TrainingProblem("logistic", optimizer=OptimizerSpec("sgd"))
    if case == "multinomial":
        return Block(X, (np.arange(y.size) % 3).astype(np.float64), sample_weight), \
            TrainingProblem("multinomial", optimizer=OptimizerSpec("adam"), n_classes=3)
    return Block(X, y, sample_weight), TrainingProblem(case, optimizer=OptimizerSpec("momentum"), epsilon=0.3)


def _progressive_plan(problem: TrainingProblem, block: Block, rates: FloatArray, progressive: bool) -> EpochPlan:
    outputs = problem.outputs
    return EpochPlan(problem.kernel(block.X), np.repeat(rates, outputs),
                     Regularization(0.01, 0.3).rows(rates.size * outputs), StepSchedule("constant"), 40, 64, 11, 1,
                     progressive_loss=progressive)


def _fresh(problem: TrainingProblem, rates: FloatArray, width: int) -> Models:
    rows = rates.size * problem.outputs
    return Models(np.full((rows, width), 0.05), np.zeros(rows), init_state(problem.optimizer, rows, width))


@pytest.mark.parametrize("case", [*(name for name in LOSS_NAMES if name != "multinomial"), "sparse", "multinomial"])
def test_the_progressive_loss_sums_each_batch_at_the_models_before_its_update(
    case: str, regression_data: Data, classification_data: Data
) -> None:
    """The oracle: the epoch one batch at a time (batch ranges back to back), each batch's loss summed by the
    kernel's exact pass over that batch's rows at the models before it. The updates are the same bits with or
    without the progressive loss, and a model's sum does not depend on the models trained with it."""
    block, problem = _progressive_case(case, regression_data, classification_data)
    rates, width = np.array([0.003, 0.05, 0.3]), block.X.shape[1]
    plan = _progressive_plan(problem, block, rates, progressive=True)
    trained, _ = minibatch_epoch(block, _fresh(problem, rates, width), plan)
    plain, _ = minibatch_epoch(block, _fresh(problem, rates, width), _progressive_plan(problem, block, rates, False))
    assert plain.loss_sums is None and trained.loss_sums is not None and trained.loss_sums.shape == (3,)
    assert trained.weights.tobytes() == plain.weights.tobytes()
    assert trained.intercepts.tobytes() == plain.intercepts.tobytes()

    order, expected, models = epoch_permutation(block.y.size, 11, 1), np.zeros(3), _fresh(problem, rates, width)
    assert block.sample_weight is not None
    for batch in range(batches_per_epoch(block.y.size, 64)):
        rows = order[batch * 64 : (batch + 1) * 64]
        expected += plan.kernel.loss_sums(Block(take_rows(block.X, rows), block.y[rows], block.sample_weight[rows]),
                                          models.weights, models.intercepts)
        models, _ = minibatch_epoch(block, models, replace(plan, batch_range=(batch, batch + 1)))
    assert models.weights.tobytes() == trained.weights.tobytes()
    np.testing.assert_allclose(trained.loss_sums, expected, rtol=1e-12)

    for k, rate in enumerate(rates):
        alone, _ = minibatch_epoch(block, _fresh(problem, rates[k : k + 1], width),
                                   _progressive_plan(problem, block, np.array([rate]), progressive=True))
        assert alone.loss_sums is not None and alone.loss_sums[0].tobytes() == trained.loss_sums[k].tobytes()
