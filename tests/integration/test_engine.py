"""The distributed engine against the numpy reference, Spark MLlib and scikit-learn, on real Delta tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from pipelines.config import Config
from pipelines.distributed.blocks import PartitionBlocks, collect_arrays
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.training import PreparedData, prepare_data, train_grid
from pipelines.sgd import (
    Block,
    EpochPlan,
    Models,
    OptimizerSpec,
    OptimizerState,
    Regularization,
    StepSchedule,
    TrainingProblem,
    init_state,
    minibatch_epoch,
    reference_gradient_descent,
    reference_minibatch_sgd,
)
from pipelines.sgd.reference import objective
from pipelines.sweep.grid import joint_grid
from pipelines.sweep.outcome import GridOutcome
from tests.conftest import make_config


def _config(table: str, loss: str, tmp_path: Path, *overrides: str) -> Config:
    label = "label" if loss == "logistic" else "target"
    return make_config(table, tmp_path, [f"data.label={label}", "data.exclude=[]", f"model.loss={loss}",
                                         *overrides])


def _prepare(spark: SparkSession, config: Config) -> PreparedData:
    table = read_feature_table(spark, config.data, config.model.loss)
    return prepare_data(spark, table, config.data, config.features, config.train)


def _train_arrays(prepared: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    parts = collect_arrays(prepared.blocks)
    return np.concatenate([p.X_train for p in parts]), np.concatenate([p.y_train for p in parts])


def _train(prepared: PreparedData, config: Config) -> GridOutcome:
    return train_grid(prepared, config.problem, config.train, config.sweep,
                      joint_grid(config.sweep.grid(), config.penalty_axis()))


def _sweep(spark: SparkSession, config: Config) -> tuple[GridOutcome, PreparedData]:
    prepared = _prepare(spark, config)
    try:
        return _train(prepared, config), prepared
    finally:
        prepared.blocks.release()


RATES = "sweep.learning_rates=[0.01, 0.1, 0.5, 2.0]"


def _gd_config(synthetic_tables: dict[str, str], loss: str, workdir: Path, *settings: str) -> Config:
    return _config(synthetic_tables[loss], loss, workdir, "train.algorithm=gd", "train.epochs=6",
                   "train.num_partitions=3", RATES, *settings)


def _preparation(config: Config) -> tuple[object, ...]:
    """What :func:`prepare_data` reads of a configuration."""
    train = config.train
    return (config.data, config.features, config.model.loss, train.seed, train.num_partitions, train.dtype,
            train.executor, train.driver_max_cells)


@pytest.fixture(scope="module")
def prepared_once(spark: SparkSession) -> Iterator[Callable[[Config], PreparedData]]:
    """The blocks of a configuration, prepared once per :func:`_preparation` for the module's cases that change
    only what training reads (the optimizer, the schedule, the training loss, the grid, the algorithm)."""
    cache: list[tuple[tuple[object, ...], PreparedData]] = []

    def prepared(config: Config) -> PreparedData:
        key = _preparation(config)
        for known, data in cache:
            if known == key:
                return data
        cache.append((key, _prepare(spark, config)))
        return cache[-1][1]

    yield prepared
    for _, data in cache:
        data.blocks.release()



@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize(
    "settings",
    [
        ["train.schedule=constant"],
        ["train.schedule=inv_sqrt", "model.reg_param=0.01"],
        ["train.schedule={name: step, step_epochs: 2, gamma: 0.5}", "model.reg_param=0.02", "model.l1_ratio=1.0"],
        ["train.schedule={name: cosine, warmup_epochs: 1}", "model.reg_param=0.01", "model.l1_ratio=0.5"],
        ["train.schedule=invscaling", "model.fit_intercept=false"],
        ["train.schedule=exponential", "train.optimizer=momentum"],
        ["train.schedule=one_cycle", "train.optimizer=adam"],
    ],
    ids=["constant", "inv_sqrt-l2", "step-l1", "warmup_cosine-elasticnet", "invscaling-nointercept",
         "exponential-momentum", "one_cycle-adam"],
)
def test_gd_matches_numpy_reference(prepared_once: Callable[[Config], PreparedData],
                                    synthetic_tables: dict[str, str], tmp_path: Path, loss: str,
                                    settings: list[str]) -> None:
    config = _gd_config(synthetic_tables, loss, tmp_path, *settings)
    prepared = prepared_once(config)  # the cases change the model, the schedule and the optimizer
    outcome = _train(prepared, config)
    X, y = _train_arrays(prepared)
    problem = config.problem
    weights, intercepts, history = reference_gradient_descent(problem, X, y, np.array(config.sweep.grid()),
                                                              iterations=6)
    final_objective = objective(problem, X, y, weights, intercepts)
    for k, rate in enumerate(outcome.rates):
        if rate.status != "completed":
            continue
        np.testing.assert_allclose(rate.weights, weights[k], rtol=1e-9, atol=1e-12)
        assert rate.intercept == pytest.approx(intercepts[k], rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(rate.curves["train_loss"][:-1], history[1:, k], rtol=1e-9)
        assert rate.curves["train_loss"][-1] == pytest.approx(final_objective[k], rel=1e-9)
    assert sum(r.status == "completed" for r in outcome.rates) >= 2


@pytest.mark.parametrize(("optimizer", "train_loss"), [
    ("sgd", "exact"), ("nesterov", "progressive"), ("adagrad", "progressive"), ("rmsprop", "exact"),
    ("adam", "progressive"), ("adamw", "exact")])
def test_local_sgd_on_one_partition_is_the_reference_minibatch_sgd(
    prepared_once: Callable[[Config], PreparedData], synthetic_tables: dict[str, str], tmp_path: Path, optimizer: str,
    train_loss: str,
) -> None:
    config = _config(synthetic_tables["logistic"], "logistic", tmp_path, "train.num_partitions=1",
                     "train.epochs=3", "train.batch_size=32", f"train.optimizer={optimizer}",
                     f"train.train_loss={train_loss}",
                     "model.reg_param=0.001", "train.schedule={name: cosine, warmup_epochs: 0.5}",
                     "sweep.learning_rates=[0.001, 0.01, 0.1]")
    prepared = prepared_once(config)
    outcome = _train(prepared, config)
    X, y = _train_arrays(prepared)
    problem = config.problem
    weights, intercepts, history = reference_minibatch_sgd(problem, X, y, np.array(config.sweep.grid()), epochs=3,
                                                           batch_size=32, seed=config.train.seed,
                                                           train_loss=config.train.train_loss)
    for k, rate in enumerate(outcome.rates):
        assert rate.status == "completed"
        np.testing.assert_allclose(rate.weights, weights[k], rtol=1e-12, atol=1e-14)
        assert rate.intercept == pytest.approx(intercepts[k], rel=1e-12, abs=1e-14)
        np.testing.assert_allclose(rate.curves["train_loss"], history[:, k], rtol=1e-10)


def _model_averaging_reference(parts: list[PartitionBlocks], rates: np.ndarray, epochs: int, batch_size: int,
                               seed: int, sync_state: str) -> tuple[np.ndarray, np.ndarray]:
    """Local SGD written out: every partition runs its epoch from the shared models and optimizer state, then
    models (and, with ``average``, the Adam moments) are averaged weighted by the partitions' rows; ``reset``
    zeroes the moments; the step counter is the largest partition's."""
    optimizer = OptimizerSpec("adam")
    d = parts[0].X_train.shape[1]
    weights, intercepts = np.zeros((rates.size, d)), np.zeros(rates.size)
    state = init_state(optimizer, rates.size, d)
    steps_per_epoch = max(-(-p.y_train.shape[0] // batch_size) for p in parts)
    counts = np.array([p.y_train.shape[0] for p in parts], dtype=np.float64)
    for epoch in range(epochs):
        kernel = TrainingProblem("logistic", optimizer=optimizer).kernel(parts[0].X_train)
        results = [minibatch_epoch(Block(p.X_train, p.y_train), Models(weights, intercepts, state),
                                   EpochPlan(kernel, rates, Regularization().rows(rates.size), StepSchedule(),
                                             epochs * steps_per_epoch, batch_size, seed + 7919 * p.partition,
                                             epoch))[0]
                   for p in parts]
        shares = counts / counts.sum()
        weights = sum(share * r.weights for share, r in zip(shares, results, strict=True))
        intercepts = sum(share * r.intercepts for share, r in zip(shares, results, strict=True))
        slots = {}
        for key in results[0].state.to_arrays():
            arrays = [r.state.to_arrays()[key] for r in results]
            if key == "step":
                slots[key] = np.max(arrays, axis=0)
            else:
                slots[key] = sum(share * a for share, a in zip(shares, arrays, strict=True)) \
                    if sync_state == "average" else np.zeros_like(arrays[0])
        state = OptimizerState.from_arrays(slots)
    return weights, intercepts


@pytest.mark.parametrize("partitions", [2, 4])
def test_local_sgd_is_a_numpy_model_averaging_reference_under_both_state_rules(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path, partitions: int,
) -> None:
    finals = {}
    for sync_state in ("average", "reset"):
        config = _config(synthetic_tables["logistic"], "logistic", tmp_path, "train.epochs=3", "train.batch_size=64",
                         f"train.num_partitions={partitions}", "train.optimizer=adam", f"train.sync_state={sync_state}",
                         "sweep.learning_rates=[0.003, 0.03]", "train.min_steps_per_epoch=0")
        outcome, prepared = _sweep(spark, config)
        parts = collect_arrays(prepared.blocks)
        assert len(parts) == partitions
        weights, intercepts = _model_averaging_reference(parts, np.array([0.003, 0.03]), 3, 64, 42, sync_state)
        for k, rate in enumerate(outcome.rates):
            assert rate.status == "completed"
            np.testing.assert_allclose(rate.weights, weights[k], rtol=1e-12, atol=1e-14)
            assert rate.intercept == pytest.approx(intercepts[k], rel=1e-12, abs=1e-14)
        finals[sync_state] = np.stack([rate.weights for rate in outcome.rates])
    # the two rules are told apart: resetting Adam's moments at every synchronization changes the models
    assert np.abs(finals["average"] - finals["reset"]).max() > 1e-4


def test_gd_reproduces_spark_mllib_gradient_descent(spark: SparkSession, synthetic_tables: dict[str, str],
                                                    tmp_path: Path) -> None:
    from pyspark.mllib.classification import LogisticRegressionWithSGD
    from pyspark.mllib.regression import LabeledPoint

    config = _config(synthetic_tables["logistic"], "logistic", tmp_path, "train.algorithm=gd", "train.epochs=7",
                     "train.schedule=inv_sqrt", "model.fit_intercept=false", "features.standardize=false",
                     "train.num_partitions=2", "sweep.learning_rates=[0.0001, 0.001, 0.01]",
                     "sweep.divergence_factor=1e12")  # MLlib has no divergence policy: let 0.01 oscillate
    outcome, prepared = _sweep(spark, config)
    assert [rate.status for rate in outcome.rates] == ["completed"] * 3
    X, y = _train_arrays(prepared)
    points = spark.sparkContext.parallelize([LabeledPoint(label, row) for label, row in zip(y, X, strict=True)], 2)
    for rate in outcome.rates:
        mllib = LogisticRegressionWithSGD.train(points, iterations=7, step=rate.learning_rate,
                                                miniBatchFraction=1.0, regParam=0.0, intercept=False,
                                                convergenceTol=0.0)
        np.testing.assert_allclose(rate.weights, mllib.weights.toArray(), rtol=1e-9)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize(
    "settings",
    [["train.algorithm=local_sgd", "train.epochs=10", "train.batch_size=32", "train.schedule=cosine"],
     ["train.algorithm=gd", "train.epochs=40", "train.schedule=constant"]],
    ids=["local_sgd-cosine", "gd"],
)
def test_best_rate_reaches_scikit_learn_optimum(prepared_once: Callable[[Config], PreparedData],
                                                synthetic_tables: dict[str, str], tmp_path: Path, loss: str,
                                                settings: list[str]) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    config = _config(synthetic_tables[loss], loss, tmp_path, *settings,
                     "sweep.learning_rates={min: 0.01, max: 3.0, num: 6}")
    prepared = prepared_once(config)
    outcome = _train(prepared, config)
    X, y = _train_arrays(prepared)
    estimator = LogisticRegression(penalty=None, tol=1e-10, max_iter=5000) if loss == "logistic" \
        else LinearRegression()
    estimator.fit(X, y)
    optimum = objective(config.problem, X, y, np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_))[0]
    best = outcome.best
    assert best is not None
    reached = objective(config.problem, X, y, best.weights[None, :], np.array([best.intercept]))[0]
    assert reached <= 1.01 * optimum


@pytest.mark.parametrize("algorithm", ["local_sgd", "gd"])
def test_diverging_rate_never_poisons_the_others(prepared_once: Callable[[Config], PreparedData],
                                                 synthetic_tables: dict[str, str], tmp_path: Path,
                                                 algorithm: str) -> None:
    common = ["train.epochs=5", f"train.algorithm={algorithm}", "train.num_partitions=2"]
    config_with = _config(synthetic_tables["squared"], "squared", tmp_path, *common,
                          "sweep.learning_rates=[0.01, 0.1, 50.0]")
    config_without = _config(synthetic_tables["squared"], "squared", tmp_path, *common,
                             "sweep.learning_rates=[0.01, 0.1]")
    prepared = prepared_once(config_with)
    with_bad, without = _train(prepared, config_with), _train(prepared_once(config_without), config_without)
    bad = with_bad.rates[2]
    assert bad.status == "diverged" and bad.stopped_epoch is not None and bad.stopped_epoch <= 2
    assert np.all(np.isnan(bad.curves["val_loss"][bad.stopped_epoch:]))
    for kept, alone in zip(with_bad.rates[:2], without.rates, strict=True):
        assert kept.status == alone.status == "completed"
        for name, curve in alone.curves.items():
            assert np.array_equal(kept.curves[name], curve), name  # bit-identical
        assert np.array_equal(kept.weights, alone.weights)
    # the diverged rate stopped consuming compute: less than 3 rates x 5 epochs of row passes
    assert with_bad.row_passes < with_bad.full_grid_row_passes - 2 * prepared.blocks.total_train_rows


def test_same_seed_and_partitioning_give_identical_curves(spark: SparkSession, synthetic_tables: dict[str, str],
                                                          tmp_path: Path) -> None:
    config = _config(synthetic_tables["logistic"], "logistic", tmp_path, "train.epochs=3", "train.num_partitions=2",
                     "sweep.learning_rates=[0.01, 0.3]")
    first, _ = _sweep(spark, config)
    second, _ = _sweep(spark, config)
    for a, b in zip(first.rates, second.rates, strict=True):
        for name in a.curves:
            assert np.array_equal(a.curves[name], b.curves[name])


def test_gd_does_not_depend_on_partition_count(spark: SparkSession, synthetic_tables: dict[str, str],
                                               tmp_path: Path) -> None:
    runs, train_rows = [], []
    for partitions in (1, 4):
        config = _config(synthetic_tables["logistic"], "logistic", tmp_path, "train.algorithm=gd", "train.epochs=4",
                         f"train.num_partitions={partitions}", "sweep.learning_rates=[0.1, 1.0]")
        outcome, prepared = _sweep(spark, config)
        runs.append(outcome)
        train_rows.append(prepared.blocks.total_train_rows)
    assert train_rows[0] == train_rows[1]  # the split does not depend on partitioning
    for a, b in zip(*[run.rates for run in runs], strict=True):
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
        np.testing.assert_allclose(a.curves["train_loss"], b.curves["train_loss"], rtol=1e-12)
        np.testing.assert_allclose(a.curves["val_auc"], b.curves["val_auc"], rtol=1e-12)


def test_float32_blocks_train_like_float64_with_half_the_input_bytes(spark: SparkSession,
                                                                     synthetic_tables: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """train.dtype=float32 stores the dense inputs rounded to float32 (half the bytes); the sweep's curves stay
    within float32's rounding of the float64 sweep's, and two float32 sweeps are bit-identical."""
    settings = ("train.epochs=3", "train.num_partitions=2", "sweep.learning_rates=[0.01, 0.3]")
    wide_config = _config(synthetic_tables["logistic"], "logistic", tmp_path / "wide", *settings)
    narrow_config = _config(synthetic_tables["logistic"], "logistic", tmp_path / "narrow", *settings,
                            "train.dtype=float32")
    wide, wide_prepared = _sweep(spark, wide_config)
    narrow, narrow_prepared = _sweep(spark, narrow_config)
    again, _ = _sweep(spark, narrow_config)
    assert narrow_prepared.blocks.dtype == "float32"
    X_wide, _ = _train_arrays(wide_prepared)
    X_narrow, _ = _train_arrays(narrow_prepared)
    assert X_narrow.dtype == np.float32 and X_narrow.nbytes * 2 == X_wide.nbytes
    np.testing.assert_array_equal(X_narrow, X_wide.astype(np.float32))
    for a, b, c in zip(wide.rates, narrow.rates, again.rates, strict=True):
        np.testing.assert_allclose(b.curves["train_loss"], a.curves["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(b.curves["val_loss"], a.curves["val_loss"], rtol=1e-5)
        assert not np.array_equal(b.weights, a.weights)  # the inputs were rounded
        np.testing.assert_array_equal(b.weights, c.weights)
