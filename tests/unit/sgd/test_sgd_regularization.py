"""Elastic-net penalty, its smooth gradient and the L1 proximal step."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.sgd.design import Design, SplitDesign
from pipelines.sgd.kernels import Block, EpochPlan, Models, minibatch_epoch
from pipelines.sgd.optimizers import OptimizerSpec, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Penalties, Regularization, as_penalties
from pipelines.sgd.schedules import ScheduleSpec

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


# ----------------------------------------------------------------------------- per-row penalties (joint grid)

PENALTIES = [Regularization(0.0, 0.0), Regularization(0.05, 0.0), Regularization(0.05, 0.5), Regularization(0.2, 1.0)]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "momentum"])
@pytest.mark.parametrize("sparse", [False, True])
def test_each_row_of_a_joint_grid_trains_bit_for_bit_as_it_would_alone(
        classification_data: tuple[np.ndarray, np.ndarray], optimizer: str, sparse: bool) -> None:
    """Rows with different penalties (and rates) in one minibatch_epoch: each row's weights, intercept and
    optimizer state have the same bytes as the row trained alone with its own Regularization."""
    X, y = classification_data
    design: Design = X
    if sparse:
        rng = np.random.default_rng(5)
        design = SplitDesign(X, sp.random(X.shape[0], 40, density=0.05, format="csr", random_state=rng))
    width = design.shape[1]
    points = [(rate, penalty) for rate in (0.05, 0.5) for penalty in PENALTIES]
    spec, schedule = OptimizerSpec(optimizer), ScheduleSpec("cosine").per_step(8)

    def train(rates: list[float], penalties: Regularization | Penalties) -> tuple[np.ndarray, ...]:
        K = len(rates)
        models = Models(np.zeros((K, width)), np.zeros(K), init_state(spec, K, width))
        kernel = TrainingProblem("logistic", optimizer=spec).kernel(design)
        for epoch in range(2):
            plan = EpochPlan(kernel, np.asarray(rates), as_penalties(penalties, K), schedule, total_steps=16,
                             batch_size=100, seed=3, epoch=epoch)
            models, _ = minibatch_epoch(Block(design, y), models, plan)
        return models.weights, models.intercepts, *models.state.to_arrays().values()

    together = train([rate for rate, _ in points], Penalties.of([penalty for _, penalty in points]))
    for row, (rate, penalty) in enumerate(points):
        alone = train([rate], penalty)
        for joint_array, alone_array in zip(together, alone, strict=True):
            assert joint_array[row].tobytes() == alone_array[0].tobytes(), (rate, penalty)


def test_penalties_select_rows_and_know_when_they_are_all_zero() -> None:
    penalties = Penalties.of(PENALTIES)
    np.testing.assert_array_equal(penalties.l1, [0.0, 0.0, 0.025, 0.2])
    np.testing.assert_array_equal(penalties.l2, [0.0, 0.05, 0.025, 0.0])
    assert not penalties.is_zero and penalties.select([0]).is_zero
    weights = np.arange(8.0).reshape(4, 2) - 3
    np.testing.assert_array_equal(penalties.penalty(weights),
                                  [r.penalty(weights[i : i + 1])[0] for i, r in enumerate(PENALTIES)])
    with pytest.raises(ValueError, match="penalties have 4 rows, the models 3"):
        as_penalties(penalties, 3)


def test_a_diverged_row_without_a_penalty_term_adds_nothing() -> None:
    """A row whose weights overflowed: a term it does not have is 0, not 0 * inf (NaN, and numpy's warning)."""
    penalties = Penalties.of(PENALTIES)
    weights = np.array([[np.inf, -np.inf], [np.inf, 1.0], [1.0, -2.0], [np.inf, 0.5]])
    with np.errstate(all="raise"):
        found = penalties.penalty(weights)
    np.testing.assert_array_equal(found, [0.0, np.inf, 0.025 * 3 + 0.0125 * 5, np.inf])
