"""The engine over blocks built in memory, its tasks run by the driver executor: no Spark at all.

A :class:`~pipelines.distributed.blocks.PartitionBlocks` is plain numpy (the training and validation rows of one
partition), so a test builds its partitions directly and hands them to
:meth:`~pipelines.distributed.executors.DriverExecutor.in_memory`; the engine runs the same task function the
Spark path runs. Also: how ``train.executor`` is decided from the data's size.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.distributed.blocks import PartitionBlocks, in_numpy_memory
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.executors import (
    DataSize,
    DriverExecutor,
    available_cpus,
    choose_executor,
    default_driver_limit,
    driver_too_small,
    jvm_bytes,
)
from pipelines.distributed.strategies import GradientDescent, LocalSGD
from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.fused import CompiledKernel
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.reference import reference_gradient_descent, reference_minibatch_sgd
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec

RATES = np.array([0.01, 0.1, 0.5])


def _partitions(n_rows: int, num_partitions: int, seed: int = 3) -> list[PartitionBlocks]:
    """``num_partitions`` partitions of a logistic problem with 4 inputs, 80% training rows each."""
    rng = np.random.default_rng(seed)
    parts = []
    for partition in range(num_partitions):
        X = rng.normal(size=(n_rows, 4))
        y = (rng.random(n_rows) < 1 / (1 + np.exp(-(X @ np.array([1.0, -2.0, 0.5, 0.0]))))).astype(np.float64)
        cut = int(0.8 * n_rows)
        parts.append(PartitionBlocks(partition, X[:cut], y[:cut], X[cut:], y[cut:]))
    return parts


def _problem(optimizer: str = "sgd") -> TrainingProblem:
    return TrainingProblem("logistic", True, Regularization(), OptimizerSpec(optimizer), ScheduleSpec(), 0.0)


def _train(executor: DriverExecutor, problem: TrainingProblem, strategy: LocalSGD | GradientDescent,
           epochs: int) -> GridTrainer:
    models = ModelRows.zeros(RATES, [42] * RATES.size, problem.regularization.rows(RATES.size),
                             executor.n_features, problem.optimizer)
    trainer = GridTrainer(executor, problem, strategy, models, epochs)
    rows = list(range(RATES.size))
    for epoch in range(1, epochs + 1):
        trainer.run_epoch(epoch, rows, rows)
    return trainer


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_local_sgd_on_one_in_memory_partition_is_the_reference_minibatch_sgd(optimizer: str) -> None:
    (part,) = _partitions(500, 1)
    problem = _problem(optimizer)
    trainer = _train(DriverExecutor.in_memory([part], 1), problem, LocalSGD(batch_size=32), epochs=3)
    weights, intercepts, _ = reference_minibatch_sgd(problem, part.X_train, part.y_train, RATES, epochs=3,
                                                     batch_size=32, seed=42)
    np.testing.assert_allclose(trainer.models.weights, weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(trainer.models.intercepts, intercepts, rtol=1e-12, atol=1e-14)
    assert trainer.jobs == 3 and trainer.row_passes == 3 * RATES.size * 400


def test_gd_over_in_memory_partitions_is_the_reference_gradient_descent() -> None:
    parts = _partitions(300, 3)
    problem = _problem()
    # partition 1 left out: an empty partition the executor skips, as the Spark path does
    executor = DriverExecutor.in_memory([parts[2], parts[0]], 3)
    assert executor.train_rows == (240, 0, 240) and [p.partition for p in executor.partitions] == [0, 2]
    trainer = _train(executor, problem, GradientDescent(), epochs=5)
    X = np.concatenate([parts[0].X_train, parts[2].X_train])
    y = np.concatenate([parts[0].y_train, parts[2].y_train])
    weights, intercepts, _ = reference_gradient_descent(problem, X, y, RATES, iterations=5)
    np.testing.assert_allclose(trainer.models.weights, weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(trainer.models.intercepts, intercepts, rtol=1e-9, atol=1e-12)


def test_the_progressive_training_loss_is_summed_while_training_and_needs_no_pass_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """local_sgd with ``train_loss: progressive`` over two partitions: the models are exact's bits; the train_loss
    of the models after epoch e is the partitions' batch losses of epoch e (each at the models before its update)
    over the training rows, plus the penalty of those models; only the initial models take a training-loss pass;
    a row's values do not depend on the rows trained with it."""
    parts = _partitions(300, 2)
    problem = TrainingProblem("logistic", True, Regularization(0.01, 0.5), OptimizerSpec("adam"), ScheduleSpec(), 0.0)
    passes: list[int] = []
    loss_sums = CompiledKernel.loss_sums
    monkeypatch.setattr(CompiledKernel, "loss_sums", lambda kernel, *args: passes.append(1) or loss_sums(kernel, *args))

    def curves(strategy: LocalSGD, rates: FloatArray) -> tuple[GridTrainer, list[FloatArray]]:
        models = ModelRows.zeros(rates, [42] * rates.size, problem.regularization.rows(rates.size), 4,
                                 problem.optimizer)
        trainer = GridTrainer(DriverExecutor.in_memory(parts, 2), problem, strategy, models, 3)
        rows = list(range(rates.size))
        losses = [trainer.run_epoch(epoch, rows, rows).train_loss for epoch in (1, 2, 3)]
        return trainer, [*losses, trainer.evaluate(rows).train_loss]

    exact, exact_losses = curves(LocalSGD(batch_size=32, train_loss="exact"), RATES)
    assert len(passes) == 4 * 2  # every evaluation, both partitions
    passes.clear()
    progressive, progressive_losses = curves(LocalSGD(batch_size=32, train_loss="progressive"), RATES)
    assert len(passes) == 2  # the initial models only
    assert progressive.models.weights.tobytes() == exact.models.weights.tobytes()
    assert progressive_losses[0].tobytes() == exact_losses[0].tobytes()  # the initial models: exact

    # the kernels' tests hold each partition's batch sums to an oracle; here, the partitions' total over the rows
    assert np.all(np.isfinite(progressive_losses[3])) and not np.allclose(progressive_losses[3], exact_losses[3])
    penalty = problem.regularization.rows(RATES.size).penalty(progressive.models.weights, 1)
    np.testing.assert_allclose(progressive_losses[3] - penalty,
                               progressive.models.epoch_loss_sums / progressive.total_train_rows, rtol=1e-12)
    np.testing.assert_allclose(progressive_losses[3], exact_losses[3], rtol=0.05)  # near the exact loss

    for k in range(RATES.size):
        _, alone = curves(LocalSGD(batch_size=32, train_loss="progressive"), RATES[k : k + 1])
        assert [loss[0] for loss in alone] == [loss[k] for loss in progressive_losses]


def test_partitions_on_threads_give_the_bits_of_one_after_the_other() -> None:
    """Three partitions on three threads and on one: the same models, state and curves (each task's result is its
    partition's alone, and the engine combines them in partition order)."""
    parts = _partitions(400, 3)
    problem = _problem("adam")
    runs = []
    for threads in (1, 3):
        executor = replace(DriverExecutor.in_memory(parts, 3), threads=threads)
        trainer = _train(executor, problem, LocalSGD(batch_size=32, sync_every=4), epochs=3)
        runs.append((trainer.models.weights.tobytes(), trainer.models.intercepts.tobytes(),
                     trainer.models.epoch_loss_sums.tobytes(), trainer.evaluate([0, 1, 2]).train_loss.tobytes()))
    assert runs[0] == runs[1]


def test_threads_return_results_in_partition_order_and_raise_the_first_partitions_error() -> None:
    executor = replace(DriverExecutor.in_memory(_partitions(50, 4), 4), threads=4)
    where: dict[int, str] = {}

    def slow_first(part: PartitionBlocks) -> int:
        time.sleep(0.05 if part.partition == 0 else 0.0)  # finishes last
        where[part.partition] = threading.current_thread().name
        return part.partition

    assert executor.map(slow_first) == [0, 1, 2, 3]
    assert all(name.startswith("lrsweep-partition") for name in where.values())

    def failing(part: PartitionBlocks) -> int:
        if part.partition in (1, 3):
            time.sleep(0.05 if part.partition == 1 else 0.0)  # partition 3 fails first
            raise RuntimeError(f"partition {part.partition}")
        return part.partition

    with pytest.raises(RuntimeError, match="partition 1"):
        executor.map(failing)
    assert DriverExecutor.in_memory(_partitions(50, 2), 2).threads == available_cpus() >= 1


def test_in_memory_partitions_must_be_distinct_in_range_and_of_one_width() -> None:
    parts = _partitions(50, 2)
    with pytest.raises(ValueError, match="partitions"):
        DriverExecutor.in_memory([parts[0], parts[0]], 2)
    with pytest.raises(ValueError, match="partitions"):
        DriverExecutor.in_memory(parts, 1)
    narrow = PartitionBlocks(1, parts[1].X_train[:, :3], parts[1].y_train, parts[1].X_val[:, :3], parts[1].y_val)
    with pytest.raises(ValueError, match="widths"):
        DriverExecutor.in_memory([parts[0], narrow], 2)


def _size(train_rows: int, model_rows: int = 8, inputs: int = 30, block_bytes: int = 10**6,
          limit: int = 10**9) -> DataSize:
    return DataSize(train_rows, model_rows, inputs, block_bytes, limit)


def test_the_drivers_copy_of_the_blocks_is_numpys_own_memory_with_the_same_values_and_flags() -> None:
    """Blocks read from bytes (as the cached blocks are) are copied once into numpy's memory (huge pages for large
    arrays); arrays numpy owns already, or views of them, are kept as they are."""
    def from_bytes(array: np.ndarray) -> np.ndarray:
        return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)

    rng = np.random.default_rng(3)
    dense, labels = rng.normal(size=(50, 3)), rng.integers(0, 2, 50).astype(float)
    csr = sp.random(50, 400, density=0.02, format="csr", random_state=4)
    read = SplitDesign(from_bytes(dense), sp.csr_matrix((from_bytes(csr.data), from_bytes(csr.indices),
                                                        from_bytes(csr.indptr)), shape=csr.shape))
    owned_labels = labels.reshape(5, 10).reshape(50)  # a view of an array numpy owns
    parts = PartitionBlocks(0, read, from_bytes(labels), read, owned_labels, from_bytes(labels), None)
    copied = in_numpy_memory(parts)
    for before, after in [(read.dense, copied.X_train.dense), (read.sparse.data, copied.X_train.sparse.data),
                          (read.sparse.indices, copied.X_val.sparse.indices), (parts.y_train, copied.y_train),
                          (parts.w_train, copied.w_train)]:
        assert after.tobytes() == before.tobytes() and after.dtype == before.dtype
        assert not np.shares_memory(after, before) and not after.flags.writeable  # read-only, as the blocks are
    assert copied.y_val is owned_labels and copied.w_val is None


def test_auto_runs_in_the_driver_at_most_driver_max_cells_and_when_the_blocks_fit() -> None:
    at_limit = choose_executor("auto", _size(1_000), max_cells=240_000)
    assert at_limit.name == "driver"
    assert at_limit.line() == ("executor: driver (auto: 1,000 training rows x 8 model rows x 30 inputs = 240,000 "
                               "cells at most train.driver_max_cells=240,000; Spark jobs would cost more than the "
                               "epochs)")
    above = choose_executor("auto", _size(1_001), max_cells=240_000)
    assert above.name == "spark" and "240,240 cells above train.driver_max_cells=240,000" in above.reason
    too_big = choose_executor("auto", _size(1_000, block_bytes=3 * 2**20, limit=2**20), max_cells=10**9)
    assert too_big.name == "spark" and too_big.reason == "auto: blocks of 3.0 MiB above the driver's 1.0 MiB"
    # asked for: taken as asked (a driver too small for the blocks is refused before they are built)
    assert choose_executor("spark", _size(10), max_cells=10**9).name == "spark"
    assert choose_executor("driver", _size(10**9), max_cells=0).name == "driver"
    with pytest.raises(ValueError, match="one of auto, spark, driver"):
        choose_executor("cluster", _size(10), max_cells=0)


def test_auto_with_a_local_master_runs_in_the_driver_wherever_the_blocks_fit() -> None:
    """A local master's executors share the driver's cores: no cell count makes its jobs pay; memory still does."""
    local = replace(_size(10**6), local_master=True)
    assert choose_executor("auto", replace(_size(10**6), local_master=False), max_cells=240_000).name == "spark"
    chosen = choose_executor("auto", local, max_cells=240_000)
    assert chosen.name == "driver" and "a local master's executors share this host's cores" in chosen.reason
    too_big = choose_executor("auto", replace(local, block_bytes=3 * 2**20, driver_limit_bytes=2**20),
                              max_cells=10**12)
    assert too_big.name == "spark" and too_big.reason == "auto: blocks of 3.0 MiB above the driver's 1.0 MiB"
    assert choose_executor("spark", local, max_cells=10**12).name == "spark"


def test_the_drivers_default_limit_is_a_share_of_its_memory_and_below_the_largest_result_spark_takes() -> None:
    """The blocks come to the driver in one action: Spark refuses its results above spark.driver.maxResultSize
    (found by an 8M-row table whose 2.1 GB of blocks fitted a quarter of 8g but not the default 1g of results)."""
    assert default_driver_limit("8g", "1g") == round(0.9 * 2**30)
    assert default_driver_limit("8g", "0") == 2**31  # 0: Spark sets no limit
    assert default_driver_limit("2g", "4g") == 2**29
    assert default_driver_limit("2g", "lots") == 2**29  # unreadable: Spark's default, 1g


def test_a_driver_too_small_for_the_blocks_is_said_with_both_sizes() -> None:
    assert driver_too_small(2**20, 2**20) is None
    message = driver_too_small(3 * 2**30, 512 * 2**20)
    assert message is not None and message.startswith(
        "train.executor=driver: the blocks would take about 3.0 GiB in the driver, above its limit of 512.0 MiB")
    assert [jvm_bytes(size) for size in ("1g", "512m", "2048k", "1024", "4G", "1t")] == [
        2**30, 2**29, 2**21, 2**30, 2**32, 2**40]
