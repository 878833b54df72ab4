"""The compiled epochs of multinomial models (pipelines.sgd.fused_multinomial) and of split designs
(pipelines.sgd.fused_sparse) against the numpy kernels, their definition: the same updates, optimizer states and
progressive losses to 1e-10 for every optimizer, penalty mix, row weights and batch ranges, and a model's bits
independent of the models trained with it (grids of odd sizes, tiles with remainders)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.fused_multinomial import CompiledMultinomialKernel
from pipelines.sgd.fused_sparse import CompiledSparseKernel
from pipelines.sgd.kernels import Block, EpochPlan, Kernel, Models, minibatch_epoch
from pipelines.sgd.losses import LOSS_NAMES, LOSS_TASKS, ScalarLoss, get_loss
from pipelines.sgd.numpy_kernel import NumpyKernel, SparseKernel
from pipelines.sgd.optimizers import OPTIMIZER_NAMES, OptimizerSpec, init_state
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule

SCALAR_LOSSES = [name for name in LOSS_NAMES if name != "multinomial"]
# none, L2 only, L1 only, elastic net
PENALTY_KINDS = Penalties(np.array([0.0, 0.0, 0.01, 0.003]), np.array([0.0, 0.02, 0.0, 0.007]))


def _run(kernel: Kernel, block: Block, rates: FloatArray, penalties: Penalties, outputs: int = 1,
         fit_intercept: bool = True, batch_size: int = 29) -> Models:
    """Two epochs, each in two batch ranges (as ``sync_every`` splits it), from small non-zero weights; the
    progressive loss summed over the last epoch."""
    rows, width = rates.size, block.X.shape[1]
    models = Models(np.full((rows, width), 0.01), np.zeros(rows), init_state(kernel.optimizer, rows, width))
    steps = math.ceil(block.y.size / batch_size)
    for epoch in range(2):
        for batch_range in ((0, steps // 2), (steps // 2, steps)):
            plan = EpochPlan(kernel, rates, penalties, StepSchedule("warmup_cosine", warmup_steps=3), 2 * steps,
                             batch_size, 7, epoch, fit_intercept, batch_range, progressive_loss=True)
            models, _ = minibatch_epoch(block, models, plan)
    assert models.loss_sums is not None and models.loss_sums.shape == (rows // outputs,)
    return models


def _assert_close(ours: Models, definition: Models) -> None:
    assert np.abs(ours.weights).max() > 1e-2  # it trained
    np.testing.assert_allclose(ours.weights, definition.weights, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.intercepts, definition.intercepts, rtol=1e-10, atol=1e-12)
    assert ours.loss_sums is not None and definition.loss_sums is not None
    np.testing.assert_allclose(ours.loss_sums, definition.loss_sums, rtol=1e-10)
    for key, value in definition.state.to_arrays().items():
        np.testing.assert_allclose(ours.state.to_arrays()[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def _assert_same_bits(together: Models, alone: Models, rows: slice, model: int) -> None:
    assert together.weights[rows].tobytes() == alone.weights.tobytes()
    assert together.intercepts[rows].tobytes() == alone.intercepts.tobytes()
    assert together.loss_sums is not None and alone.loss_sums is not None
    assert together.loss_sums[model].tobytes() == alone.loss_sums[0].tobytes()
    for key, value in alone.state.to_arrays().items():
        assert together.state.to_arrays()[key][rows].tobytes() == value.tobytes(), key


def _multiclass(n_classes: int) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(n_classes)
    X = rng.standard_normal((263, 6))
    scores = X @ rng.standard_normal((6, n_classes)) + rng.gumbel(size=(263, n_classes))
    return X, np.argmax(scores, axis=1).astype(np.float64)


@pytest.mark.parametrize("optimizer_name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("n_classes", [3, 5])
def test_the_compiled_multinomial_epoch_equals_the_numpy_loop(optimizer_name: str, n_classes: int) -> None:
    X, y = _multiclass(n_classes)
    loss, optimizer = get_loss("multinomial", n_classes=n_classes), OptimizerSpec(optimizer_name)
    rates = np.repeat([0.01, 0.1, 0.3, 0.05], n_classes)
    penalties = PENALTY_KINDS.select(np.repeat(np.arange(4), n_classes))
    row_weights = np.random.default_rng(1).uniform(0.0, 2.0, y.size)
    for sample_weight, fit_intercept in ((None, True), (row_weights, False)):
        block = Block(X, y, sample_weight)
        ours = _run(CompiledMultinomialKernel(loss, optimizer), block, rates, penalties, n_classes, fit_intercept)
        definition = _run(NumpyKernel(loss, optimizer), block, rates, penalties, n_classes, fit_intercept)
        _assert_close(ours, definition)


@pytest.mark.parametrize("n_models", [1, 3, 5])
def test_a_compiled_multinomial_model_is_bit_identical_whatever_models_share_its_pass(n_models: int) -> None:
    n_classes = 5  # a tile of 4 class rows and a remainder of 1, tiles across model boundaries not needed
    X, y = _multiclass(n_classes)
    kernel = CompiledMultinomialKernel(get_loss("multinomial", n_classes=n_classes), OptimizerSpec("adam"))
    rates = np.geomspace(1e-3, 0.5, n_models)
    kinds = np.arange(n_models) % 4

    def train(models: np.ndarray) -> Models:
        return _run(kernel, Block(X, y), np.repeat(rates[models], n_classes),
                    PENALTY_KINDS.select(np.repeat(kinds[models], n_classes)), n_classes)

    together = train(np.arange(n_models))
    for model in range(n_models):
        _assert_same_bits(together, train(np.array([model])), slice(model * n_classes, (model + 1) * n_classes),
                          model)


def _split_block(loss_name: str, dense_width: int, weighted: bool) -> Block:
    """A split design: ``dense_width`` dense inputs and a 40-column CSR part of ~4 non-zeros a row (some rows
    empty, some columns never touched), labels of the loss's task."""
    rng = np.random.default_rng(dense_width)
    n_rows = 241
    dense = rng.standard_normal((n_rows, dense_width))
    sparse = sp.random(n_rows, 40, density=0.1, format="csr", random_state=np.random.RandomState(3),
                       data_rvs=lambda size: np.random.RandomState(4).uniform(0.2, 1.5, size))
    signal = sparse @ rng.standard_normal(40) + (dense[:, 0] if dense_width else 0.0)
    task = LOSS_TASKS[loss_name]
    y = (rng.uniform(size=n_rows) < 1.0 / (1.0 + np.exp(-signal))).astype(np.float64) if task == "binary" else \
        np.floor(np.exp(0.3 * signal)) if task == "count" else signal + 0.1 * rng.standard_normal(n_rows)
    return Block(SplitDesign(dense, sparse), y, rng.uniform(0.0, 2.0, n_rows) if weighted else None)


@pytest.mark.parametrize("loss_name", SCALAR_LOSSES)
def test_the_compiled_sparse_epoch_equals_the_numpy_loop_for_every_loss(loss_name: str) -> None:
    loss = get_loss(loss_name, 0.3)
    assert isinstance(loss, ScalarLoss)
    block = _split_block(loss_name, 3, weighted=True)
    rates, optimizer = np.array([0.003, 0.03, 0.1, 0.05]), OptimizerSpec("sgd")
    for penalties in (Penalties(np.zeros(4), np.zeros(4)), PENALTY_KINDS):  # the touched-columns steps, then all
        ours = _run(CompiledSparseKernel(loss, optimizer), block, rates, penalties)
        _assert_close(ours, _run(SparseKernel(loss, optimizer), block, rates, penalties))


@pytest.mark.parametrize("optimizer_name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("dense_width", [0, 5])
def test_the_compiled_sparse_epoch_equals_the_numpy_loop_for_every_optimizer(optimizer_name: str,
                                                                             dense_width: int) -> None:
    loss, optimizer = get_loss("logistic"), OptimizerSpec(optimizer_name)
    assert isinstance(loss, ScalarLoss)
    rates = np.array([0.003, 0.03, 0.1, 0.05, 0.2])
    penalties = PENALTY_KINDS.select([0, 1, 2, 3, 0])
    for weighted, fit_intercept in ((False, True), (True, False)):
        block = _split_block("logistic", dense_width, weighted)
        ours = _run(CompiledSparseKernel(loss, optimizer), block, rates, penalties, fit_intercept=fit_intercept)
        definition = _run(SparseKernel(loss, optimizer), block, rates, penalties, fit_intercept=fit_intercept)
        _assert_close(ours, definition)


@pytest.mark.parametrize("n_points", [1, 3, 5, 7, 9])
@pytest.mark.parametrize(("optimizer_name", "penalized"), [("sgd", True), ("adam", True), ("sgd", False)])
def test_a_compiled_sparse_row_is_bit_identical_whatever_rows_share_its_pass(n_points: int, optimizer_name: str,
                                                                           penalized: bool) -> None:
    """Penalized rows make the pass move every column; plain SGD without a penalty on any row runs the touched
    columns' steps on the weights held by column: a row's bits are the same in a pass of either kind."""
    loss = get_loss("logistic")
    assert isinstance(loss, ScalarLoss)
    kernel = CompiledSparseKernel(loss, OptimizerSpec(optimizer_name))
    block = _split_block("logistic", 6, weighted=True)
    rates = np.geomspace(1e-3, 0.5, n_points)
    penalties = PENALTY_KINDS.select(np.arange(n_points) % 4 if penalized else np.zeros(n_points, dtype=np.int64))
    together = _run(kernel, block, rates, penalties)
    for k in range(n_points):
        alone = _run(kernel, block, rates[k : k + 1], penalties.select([k]))
        _assert_same_bits(together, alone, slice(k, k + 1), k)


def test_the_problem_chooses_the_compiled_kernels() -> None:
    block = _split_block("logistic", 2, weighted=False)
    assert isinstance(TrainingProblem("logistic").kernel(block.X), CompiledSparseKernel)
    assert isinstance(TrainingProblem("multinomial", n_classes=3).kernel(np.zeros((2, 2))), CompiledMultinomialKernel)
    assert type(TrainingProblem("multinomial", n_classes=3).kernel(block.X)) is SparseKernel



def test_each_generated_rule_has_a_name_of_its_own() -> None:
    """numba calls a cached kernel's inner functions by their qualified name and a per-process counter: kernels
    cached by different processes and loaded into one once called each other's update (momentum's on sgd's empty
    state: wrong steps, a corrupted heap; seen as a progressive run of the sparse kernel after a dense one). Each
    generated rule is named after the rules it closes over, so one name is one rule."""
    from pipelines.sgd.compiling import row_update
    from pipelines.sgd.fused import margin_rule
    from pipelines.sgd.optimizers import UPDATE_RULES

    updates = {row_update(rule, decay).__qualname__ for rule in set(UPDATE_RULES.values()) for decay in (False, True)}
    assert len(updates) == 2 * len(set(UPDATE_RULES.values()))
    rules = {margin_rule(loss, progressive)[0].__qualname__ for loss in map(get_loss, SCALAR_LOSSES)
             for progressive in (False, True)}
    assert len(rules) == 2 * len(SCALAR_LOSSES)
