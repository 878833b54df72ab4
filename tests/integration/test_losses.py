"""scikit-learn's SGD losses and poisson through the engine: each reaches an independent optimum of the same
objective on the same rows, and the whole job registers a model that scikit-learn and MLflow load and predict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from scipy.optimize import minimize

from pipelines.config import Config
from pipelines.distributed.blocks import collect_arrays
from pipelines.errors import DataError
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.orchestration.training import prepare_data, train_grid
from pipelines.sgd import TrainingProblem, get_loss
from pipelines.sgd.reference import objective
from pipelines.sweep.grid import joint_grid
from tests.conftest import make_config

REG = 0.01  # every objective here: mean loss + REG / 2 * ||w||^2 (the intercept unpenalized)
EPSILON = 0.5


@pytest.fixture(scope="module")
def count_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Counts (visits) from a log-linear model of 4 features on different scales."""
    rng = np.random.default_rng(31)
    X = rng.normal(size=(2000, 4)) * [1.0, 4.0, 0.5, 2.0] + [0.0, 2.0, 1.0, -1.0]
    z = ((X - X.mean(0)) / X.std(0)) @ np.array([0.6, -0.4, 0.3, 0.0]) + 0.8
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])
    frame["visits"] = rng.poisson(np.exp(z)).astype(np.int64)
    path = str(tmp_path_factory.mktemp("counts") / "visits")
    spark.createDataFrame(frame).write.format("delta").save(path)
    return path


def _trained(spark: SparkSession, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The training rows as the engine sees them, and the best point's weights and intercept."""
    table = read_feature_table(spark, config.data, config.model.loss)
    prepared = prepare_data(spark, table, config.data, config.features, config.train)
    try:
        outcome = train_grid(prepared, config.problem, config.train, config.sweep,
                         joint_grid(config.sweep.grid(), config.penalty_axis()))
        parts = collect_arrays(prepared.blocks)
    finally:
        prepared.blocks.release()
    best = outcome.best
    assert best is not None
    X = np.concatenate([p.X_train for p in parts])
    y = np.concatenate([p.y_train for p in parts])
    return X, y, best.weights, best.intercept


def _scipy_optimum(X: np.ndarray, y: np.ndarray, loss: str) -> float:
    """The objective's minimum by L-BFGS on (w, b) from the loss's own value and derivative (smooth losses)."""
    function = get_loss(loss, EPSILON)

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margins = (X @ w + b)[:, np.newaxis]
        derivative = function.derivative(margins, y)[:, 0]
        value = function.value(margins, y).mean() + 0.5 * REG * w @ w
        return float(value), np.append(X.T @ derivative / len(y) + REG * w, derivative.mean())

    result = minimize(value_and_gradient, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": 1e-10})
    return float(result.fun)


def _sklearn_optimum(X: np.ndarray, y: np.ndarray, loss: str) -> float:
    """The same objective minimized by scikit-learn's own solver: liblinear's LinearSVC/LinearSVR
    (``C = 1 / (REG n)``, the intercept a feature of scale 100 so its penalty is negligible) and lbfgs's
    PoissonRegressor (``alpha = REG``); evaluated with our loss function at the solution."""
    from sklearn.linear_model import PoissonRegressor
    from sklearn.svm import LinearSVC, LinearSVR

    C = 1.0 / (REG * len(y))
    if loss in ("hinge", "squared_hinge"):
        model = LinearSVC(loss=loss, C=C, intercept_scaling=100.0, tol=1e-8, max_iter=200_000, dual=True,
                          random_state=0)
        model.fit(X, y)
        w, b = model.coef_.ravel(), float(model.intercept_[0])
    elif loss in ("epsilon_insensitive", "squared_epsilon_insensitive"):
        svr = LinearSVR(loss=loss, C=C, epsilon=EPSILON, intercept_scaling=100.0, tol=1e-8, max_iter=200_000,
                        dual=True, random_state=0)
        svr.fit(X, y)
        w, b = svr.coef_.ravel(), float(svr.intercept_[0])
    else:
        poisson = PoissonRegressor(alpha=REG, tol=1e-10, max_iter=5000).fit(X, y)
        w, b = poisson.coef_, float(poisson.intercept_)
    return float(objective(TrainingProblem(loss, regularization=_penalty(), epsilon=EPSILON), X, y, w[np.newaxis],
                           np.array([b]))[0])


def _penalty():  # type: ignore[no-untyped-def]
    from pipelines.sgd import Regularization

    return Regularization(REG, 0.0)


#: (loss, table, label, independent optimum, relative tolerance of our best objective above it)
CASES = [
    ("hinge", "logistic", "label", _sklearn_optimum, 0.01),
    ("squared_hinge", "logistic", "label", _sklearn_optimum, 0.005),
    ("modified_huber", "logistic", "label", _scipy_optimum, 0.005),
    ("huber", "squared", "target", _scipy_optimum, 0.005),
    ("epsilon_insensitive", "squared", "target", _sklearn_optimum, 0.01),
    ("squared_epsilon_insensitive", "squared", "target", _sklearn_optimum, 0.005),
    ("poisson", "counts", "visits", _sklearn_optimum, 0.005),
]


@pytest.mark.parametrize(("loss", "table", "label", "optimum", "tolerance"), CASES, ids=[c[0] for c in CASES])
def test_each_loss_reaches_an_independent_optimum_of_its_objective(
        spark: SparkSession, synthetic_tables: dict[str, str], count_table: str, tmp_path: Path, loss: str,
        table: str, label: str, optimum, tolerance: float) -> None:  # type: ignore[no-untyped-def]
    path = count_table if table == "counts" else synthetic_tables[table]
    config = make_config(path, tmp_path, [
        f"data.label={label}", "data.exclude=[]", f"model.loss={loss}", f"model.reg_param={REG}",
        f"model.epsilon={EPSILON}", "train.epochs=30", "train.batch_size=32", "train.num_partitions=1",
        "train.schedule.name=cosine", "sweep.learning_rates=[0.03, 0.1, 0.3]"])
    X, y, w, b = _trained(spark, config)
    ours = float(objective(replace(config.problem, regularization=_penalty()), X, y, w[np.newaxis], np.array([b]))[0])
    theirs = optimum(X, y, loss)
    print(f"{loss}: objective {ours:.6f}, independent optimum {theirs:.6f} (ratio {ours / theirs:.5f})")
    assert ours <= theirs * (1 + tolerance), (ours, theirs)
    # nothing beats the optimum (the objectives are the same): liblinear's dual coordinate descent stops at its
    # tolerance (and warns when it did not converge), so its solution may be a little above the true optimum
    assert ours >= theirs * (1 - 1e-4), (ours, theirs)


def test_poisson_job_registers_a_poisson_regressor_that_predicts_means(
        spark: SparkSession, count_table: str, tmp_path: Path) -> None:
    """The whole job: the champion is a PoissonRegressor whose predictions are exp(margin), val metrics are
    the Poisson deviance, and batch scoring writes the predicted mean."""
    from pipelines.orchestration.score import score_table

    config = make_config(count_table, tmp_path, [
        "data.label=visits", "data.exclude=[]", "model.loss=poisson", "train.epochs=6", "train.batch_size=64",
        "sweep.learning_rates=[0.01, 0.1]", "sweep.id=poisson-1", "tracking.experiment=losses",
        "tracking.registered_model=visits", "tracking.register_when=always"])
    report = run_tracked_sweep(spark, config, progress=None)
    best = report.outcome.best
    assert best is not None and best.final_metrics()["val_poisson_deviance"] == pytest.approx(
        2 * best.final_metrics()["val_loss"])
    model = mlflow.sklearn.load_model(report.model_uri)
    assert type(model.named_steps["model"]).__name__ == "PoissonRegressor"
    rows = spark.read.format("delta").load(count_table).limit(50).toPandas().drop(columns=["visits"])
    encoded = model.named_steps["encode"].transform(rows)
    np.testing.assert_allclose(model.predict(rows), np.exp(encoded @ best.weights + best.intercept), rtol=1e-12)
    score_table(spark, config)
    predictions = spark.read.format("delta").load(config.output.predictions_table).toPandas()
    assert (predictions.prediction > 0).all() and "predicted_label" not in predictions.columns


def test_negative_counts_and_string_labels_for_regression_fail_naming_the_column(
        spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path) -> None:
    config = make_config(synthetic_tables["squared"], tmp_path, ["data.label=target", "model.loss=poisson"])
    frame = spark.read.format("delta").load(synthetic_tables["squared"])
    assert frame.where("target < 0").count() > 0
    with pytest.raises(DataError, match=r"label 'target' has negative values \(min -[0-9.]+\); poisson loss needs "
                                        "counts or rates >= 0"):
        read_feature_table(spark, config.data, "poisson")
    strings = str(tmp_path / "strings")
    frame.selectExpr("cast(target > 10 as string) as grade", "x0", "x1").write.format("delta").save(strings)
    config = make_config(strings, tmp_path, ["data.label=grade", "model.loss=huber"])
    with pytest.raises(DataError, match=r"label column 'grade' has type string; expected a numeric or boolean "
                                        r"column for the regression loss 'huber'"):
        read_feature_table(spark, config.data, "huber")
