"""The compiled kernel (pipelines.sgd.fused) against the numpy kernel, the oracle built from the losses' and
optimizers' numpy definitions, on dense inputs: the same updates and sums for every loss, optimizer, penalty
mix, row weights and batch range, and a row's bits independent of the other rows."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.sgd._types import FloatArray
from pipelines.sgd.compiling import row_update
from pipelines.sgd.fused import CompiledKernel
from pipelines.sgd.kernels import Block, EpochPlan, Kernel, Models, minibatch_epoch
from pipelines.sgd.losses import LOSS_NAMES, LOSS_TASKS, ScalarLoss, get_loss
from pipelines.sgd.numpy_kernel import NumpyKernel
from pipelines.sgd.optimizers import OPTIMIZER_NAMES, OptimizerSpec, OptimizerState, init_state
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule

Data = tuple[FloatArray, FloatArray]
SCALAR_LOSSES = [name for name in LOSS_NAMES if name != "multinomial"]
# a joint grid's penalties: none, L2 only, L1 only, elastic net
PENALTIES = Penalties(np.array([0.0, 0.0, 0.01, 0.003]), np.array([0.0, 0.02, 0.0, 0.007]))
RATES = np.array([0.003, 0.03, 0.1, 0.05])


def _data(loss_name: str, regression_data: Data, classification_data: Data) -> Data:
    if LOSS_TASKS[loss_name] == "binary":
        return classification_data
    X, y = regression_data
    if loss_name == "poisson":
        return X, np.floor(np.exp(0.3 * X[:, 0] + 0.2 * X[:, 1]))
    return X, y


def _kernel(loss_name: str, optimizer: OptimizerSpec, compiled: bool) -> Kernel:
    """The compiled kernel, or the numpy oracle, of one loss (``epsilon = 0.3``) and optimizer."""
    loss = get_loss(loss_name, 0.3)
    assert isinstance(loss, ScalarLoss)
    return CompiledKernel(loss, optimizer) if compiled else NumpyKernel(loss, optimizer)


def _epochs(X: FloatArray, y: FloatArray, optimizer: OptimizerSpec, loss_name: str, compiled: bool,
            rows: slice = slice(None), sample_weight: FloatArray | None = None, fit_intercept: bool = True,
            epochs: int = 2) -> tuple[FloatArray, FloatArray, OptimizerState]:
    rates = RATES[rows]
    kernel = _kernel(loss_name, optimizer, compiled)
    penalties = PENALTIES.select(np.arange(RATES.size)[rows])
    models = Models(np.zeros((rates.size, X.shape[1])), np.zeros(rates.size),
                    init_state(optimizer, rates.size, X.shape[1]))
    steps = math.ceil(X.shape[0] / 64)
    for epoch in range(epochs):
        # two batch ranges per epoch, as sync_every splits it
        for batch_range in ((0, steps // 2), (steps // 2, steps)):
            plan = EpochPlan(kernel, rates, penalties, StepSchedule("warmup_cosine", warmup_steps=5), epochs * steps,
                             64, 11, epoch, fit_intercept, batch_range)
            models, _ = minibatch_epoch(Block(X, y, sample_weight), models, plan)
    return models.weights, models.intercepts, models.state


@pytest.mark.parametrize("loss_name", SCALAR_LOSSES)
@pytest.mark.parametrize("optimizer_name", OPTIMIZER_NAMES)
def test_compiled_epoch_equals_the_numpy_loop(optimizer_name: str, loss_name: str, regression_data: Data,
                                              classification_data: Data) -> None:
    X, y = _data(loss_name, regression_data, classification_data)
    optimizer = OptimizerSpec(optimizer_name)
    compiled = _epochs(X, y, optimizer, loss_name, compiled=True)
    numpy_loop = _epochs(X, y, optimizer, loss_name, compiled=False)
    assert np.abs(compiled[0]).max() > 1e-3  # it trained
    np.testing.assert_allclose(compiled[0], numpy_loop[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(compiled[1], numpy_loop[1], rtol=1e-10, atol=1e-12)
    for key, value in numpy_loop[2].to_arrays().items():
        np.testing.assert_allclose(compiled[2].to_arrays()[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_compiled_epoch_with_row_weights_equals_the_numpy_loop(fit_intercept: bool, classification_data: Data) -> None:
    X, y = classification_data
    sample_weight = np.random.default_rng(3).uniform(0.0, 2.0, y.size)
    optimizer = OptimizerSpec("momentum")
    compiled = _epochs(X, y, optimizer, "logistic", True, sample_weight=sample_weight, fit_intercept=fit_intercept)
    numpy_loop = _epochs(X, y, optimizer, "logistic", False, sample_weight=sample_weight, fit_intercept=fit_intercept)
    np.testing.assert_allclose(compiled[0], numpy_loop[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(compiled[1], numpy_loop[1], rtol=1e-10, atol=1e-12)
    if not fit_intercept:
        np.testing.assert_array_equal(compiled[1], 0.0)


def test_wide_rows_train_as_the_numpy_loop() -> None:
    """Rows of more than 64 inputs are transposed eight rows at a time: the same updates as the numpy loop, with
    batches of 64 rows and a last batch of 45 (not a multiple of eight)."""
    rng = np.random.default_rng(70)
    X = rng.standard_normal((301, 70))
    y = (rng.uniform(size=301) < 1.0 / (1.0 + np.exp(-X[:, 0] + 0.5 * X[:, 69]))).astype(np.float64)
    compiled = _epochs(X, y, OptimizerSpec("sgd"), "logistic", compiled=True)
    numpy_loop = _epochs(X, y, OptimizerSpec("sgd"), "logistic", compiled=False)
    assert np.abs(compiled[0]).max() > 1e-3  # it trained
    np.testing.assert_allclose(compiled[0], numpy_loop[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(compiled[1], numpy_loop[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_a_compiled_row_is_bit_identical_whatever_rows_share_its_pass(optimizer_name: str,
                                                                     classification_data: Data) -> None:
    X, y = classification_data
    optimizer = OptimizerSpec(optimizer_name)
    together = _epochs(X, y, optimizer, "logistic", True)
    for k in range(RATES.size):
        alone = _epochs(X, y, optimizer, "logistic", True, rows=slice(k, k + 1))
        np.testing.assert_array_equal(together[0][k], alone[0][0])
        np.testing.assert_array_equal(together[1][k], alone[1][0])


@pytest.mark.parametrize("n_points", [1, 3, 5, 7, 9, 64, 65])
def test_a_row_of_a_tiled_pass_is_bit_identical_to_the_row_alone(n_points: int) -> None:
    """The epoch runs TILE model rows per tile and the remainder one at a time: a grid of any size (full tiles,
    odd remainders) gives each point the bits it gets alone, with every penalty kind, odd widths (inputs past the
    unrolled groups) and a last batch of odd size, and its progressive loss too."""
    rng = np.random.default_rng(n_points)
    X = rng.standard_normal((301, 7))
    y = (rng.uniform(size=301) < 1.0 / (1.0 + np.exp(-X[:, 0] + 0.5 * X[:, 1]))).astype(np.float64)
    rates = np.geomspace(1e-3, 1.0, n_points)
    kinds = np.arange(n_points) % PENALTIES.n_rows
    penalties = PENALTIES.select(kinds)
    kernel = _kernel("logistic", OptimizerSpec("adam"), compiled=True)

    def train(rows: FloatArray) -> Models:
        models = Models(np.zeros((rows.size, X.shape[1])), np.zeros(rows.size),
                        init_state(kernel.optimizer, rows.size, X.shape[1]))
        for epoch in range(2):
            plan = EpochPlan(kernel, rates[rows], penalties.select(rows), StepSchedule("constant"), 20, 37, 5, epoch,
                             progressive_loss=True)
            models, _ = minibatch_epoch(Block(X, y), models, plan)
        return models

    together = train(np.arange(n_points))
    assert together.loss_sums is not None
    for k in range(n_points):
        alone = train(np.array([k]))
        assert alone.loss_sums is not None
        assert together.weights[k].tobytes() == alone.weights[0].tobytes(), k
        assert together.intercepts[k].tobytes() == alone.intercepts[0].tobytes(), k
        assert together.loss_sums[k].tobytes() == alone.loss_sums[0].tobytes(), k
        for key, value in alone.state.to_arrays().items():
            assert together.state.to_arrays()[key][k].tobytes() == value[0].tobytes(), key


def test_float32_inputs_train_within_their_rounding_of_float64(classification_data: Data) -> None:
    """float32 inputs are widened as read: the run equals a float64 run on the float32-rounded inputs exactly,
    and differs from the float64 inputs' run by about float32's rounding."""
    X, y = classification_data
    optimizer = OptimizerSpec("sgd")
    narrow = _epochs(X.astype(np.float32), y, optimizer, "logistic", True)
    rounded = _epochs(X.astype(np.float32).astype(np.float64), y, optimizer, "logistic", True)
    wide = _epochs(X, y, optimizer, "logistic", True)
    np.testing.assert_array_equal(narrow[0], rounded[0])
    np.testing.assert_allclose(narrow[0], wide[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_name", SCALAR_LOSSES)
def test_compiled_loss_sums_equal_the_numpy_definition(loss_name: str, regression_data: Data,
                                                       classification_data: Data) -> None:
    X, y = _data(loss_name, regression_data, classification_data)
    rng = np.random.default_rng(9)
    weights, intercepts = rng.standard_normal((5, X.shape[1])) * 0.7, rng.standard_normal(5)
    weights[4] *= 400.0  # saturated margins: the logistic and exponential tails
    compiled, oracle = (_kernel(loss_name, OptimizerSpec(), flag) for flag in (True, False))
    sample_weight = rng.uniform(0.0, 2.0, y.size)
    for row_weights in (None, sample_weight):
        block = Block(X, y, row_weights)
        np.testing.assert_allclose(compiled.loss_sums(block, weights, intercepts),
                                   oracle.loss_sums(block, weights, intercepts), rtol=1e-12)
    # a row's sum does not depend on the rows evaluated with it
    alone = [compiled.loss_sums(Block(X, y), weights[k : k + 1], intercepts[k : k + 1])[0] for k in range(5)]
    np.testing.assert_array_equal(compiled.loss_sums(Block(X, y), weights, intercepts), alone)


@pytest.mark.parametrize("loss_name", SCALAR_LOSSES)
def test_compiled_gradient_sums_equal_the_numpy_definition(loss_name: str, regression_data: Data,
                                                           classification_data: Data) -> None:
    X, y = _data(loss_name, regression_data, classification_data)
    rng = np.random.default_rng(10)
    weights, intercepts = rng.standard_normal((4, X.shape[1])) * 0.7, rng.standard_normal(4)
    compiled, oracle = (_kernel(loss_name, OptimizerSpec(), flag) for flag in (True, False))
    for row_weights in (None, rng.uniform(0.0, 2.0, y.size)):
        block = Block(X, y, row_weights)
        for ours, definition in zip(compiled.gradient_sums(block, weights, intercepts),
                                    oracle.gradient_sums(block, weights, intercepts), strict=True):
            np.testing.assert_allclose(ours, definition, rtol=1e-11, atol=1e-11)
    alone = [compiled.gradient_sums(Block(X, y), weights[k : k + 1], intercepts[k : k + 1])[0][0] for k in range(4)]
    np.testing.assert_array_equal(compiled.gradient_sums(Block(X, y), weights, intercepts)[0], np.vstack(alone))


_INDEX_KEY = """
import numpy as np
from pipelines.sgd.fused import CompiledKernel, epoch_kernel, margin_rule
from pipelines.sgd.kernels import Block, EpochPlan, Models, minibatch_epoch
from pipelines.sgd.losses import get_loss
from pipelines.sgd.optimizers import OptimizerSpec, init_state
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule

loss, optimizer = get_loss("logistic"), OptimizerSpec("adamw")
X = np.random.default_rng(0).standard_normal((50, 3))
plan = EpochPlan(CompiledKernel(loss, optimizer), np.array([0.1]), Penalties(np.zeros(1), np.full(1, 0.01)),
                 StepSchedule(), 10, 16, 0, 0, progressive_loss=True)
minibatch_epoch(Block(X, (X[:, 0] > 0).astype(float)), Models(np.zeros((1, 3)), np.zeros(1),
                init_state(optimizer, 1, 3)), plan)
kernel = epoch_kernel(*margin_rule(loss, True), optimizer.rule, optimizer.decoupled_decay)
print(type(kernel._cache).__name__, sum(kernel.stats.cache_hits.values()))
"""


def test_a_second_process_loads_the_epoch_kernel_the_first_cached(tmp_path: Path) -> None:
    """Spark's Python workers load the machine code the first process cached only if each computes the same cache
    key before it compiles as after: numba's pickle of a generated rule (a closure) and marshal's bytes of a code
    object (which follow reference counts) gave other keys, and every worker compiled its kernels anew (seconds
    each)."""
    import subprocess
    import sys

    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # an empty cache: the first process compiles
    answers = [subprocess.run([sys.executable, "-c", _INDEX_KEY], capture_output=True, text=True, check=True,
                              env=environment).stdout.split() for _ in range(2)]
    if answers[0][0] != "RuleCache":
        pytest.skip("no writable cache location")
    assert answers[0][1] == "0" and answers[1][1] == "1", answers


def test_a_rules_cache_key_does_not_follow_reference_counts() -> None:
    """marshal's bytes of a code object change as its constants gain references (it marks shared objects), so a
    key made of them differed between processes and between a kernel's load and its save."""
    from pipelines.sgd.compiling import _described
    from pipelines.sgd.optimizers import adam_rule

    rule = row_update(adam_rule, True)
    before = _described(rule)
    references = [list(rule.__code__.co_consts) for _ in range(3)], [adam_rule.__code__.co_names] * 3
    assert _described(rule) == before and references
