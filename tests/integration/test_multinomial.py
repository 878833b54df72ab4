"""Multinomial models through the whole job on scikit-learn's digits (10 classes, integer labels) and wine (3
classes, string labels) as Delta tables, and hinge on breast_cancer: the champion's accuracy next to
scikit-learn's own estimators on the same rows, loaded back through MLflow, scored in batch."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from pipelines.errors import DataError
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.score import score_table
from pipelines.orchestration.sweep import run_tracked_sweep
from tests.conftest import make_config

COMMON = ["data.exclude=[]", "data.validation_fraction=0.3", "train.epochs=10", "sweep.learning_rates=[0.1, 0.3, 1.0]",
          "tracking.register_when=always", "tracking.experiment=multiclass"]


def _delta(spark: SparkSession, frame: pd.DataFrame, path: Path) -> str:
    spark.createDataFrame(frame).write.format("delta").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tables(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    root = tmp_path_factory.mktemp("sklearn_tables")
    digits = load_digits(as_frame=True).frame.rename(columns=lambda c: c.replace("-", "_"))
    wine = load_wine(as_frame=True).frame
    wine["cultivar"] = wine.pop("target").map({0: "barolo", 1: "grignolino", 2: "barbera"})
    cancer = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    return {"digits": _delta(spark, digits, root / "digits"), "wine": _delta(spark, wine, root / "wine"),
            "cancer": _delta(spark, cancer, root / "cancer")}


def _sklearn_accuracy(frame: pd.DataFrame, label: str, estimator: object) -> float:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = frame.drop(columns=[label]), frame[label]
    model = make_pipeline(StandardScaler(), estimator).fit(X, y)
    return float((model.predict(X) == y).mean())


@pytest.mark.parametrize(("name", "label", "classes"), [("digits", "target", list(range(10))),
                                                         ("wine", "cultivar", ["barbera", "barolo", "grignolino"])])
def test_multinomial_champion_is_as_accurate_as_sklearn_and_loads_through_mlflow(
        spark: SparkSession, tables: dict[str, str], tmp_path: Path, name: str, label: str,
        classes: list[object]) -> None:
    from sklearn.linear_model import LogisticRegression

    config = make_config(tables[name], tmp_path, [*COMMON, f"data.label={label}", "model.loss=multinomial",
                                                   f"sweep.id={name}-1", f"tracking.registered_model={name}"])
    lines: list[str] = []
    report = run_tracked_sweep(spark, config, progress=lines.append)
    assert any(line.startswith(f"classes: {len(classes)} (") for line in lines), lines
    best = report.outcome.best
    assert best is not None and best.weights.shape[0] == len(classes)
    metrics = best.final_metrics()
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_auc"} <= set(metrics)
    frame = spark.read.format("delta").load(tables[name]).toPandas()
    model = mlflow.sklearn.load_model(report.model_uri)
    assert type(model.named_steps["model"]).__name__ == "LogisticRegression"
    assert list(model.classes_) == classes
    ours = float((model.predict(frame.drop(columns=[label])) == frame[label]).mean())
    theirs = _sklearn_accuracy(frame, label, LogisticRegression(max_iter=5000))
    print(f"{name}: champion accuracy on the table {ours:.4f}, scikit-learn LogisticRegression {theirs:.4f}")
    assert ours >= theirs - 0.04, (ours, theirs)
    probabilities = mlflow.pyfunc.load_model(report.model_uri).predict(frame.drop(columns=[label]).head(20))
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-12)
    score_table(spark, config)
    predictions = spark.read.format("delta").load(config.output.predictions_table).toPandas()
    assert set(predictions.predicted_label) <= {str(c) for c in classes}
    assert ((predictions.prediction > 1.0 / len(classes) - 1e-12) & (predictions.prediction <= 1.0)).all()
    agreement = (predictions.predicted_label == predictions[label].astype(str)).mean()
    assert agreement == pytest.approx(ours, abs=1e-12)


def test_hinge_on_breast_cancer_is_as_accurate_as_linear_svc(spark: SparkSession, tables: dict[str, str],
                                                             tmp_path: Path) -> None:
    from sklearn.svm import LinearSVC

    config = make_config(tables["cancer"], tmp_path, [*COMMON, "data.label=target", "model.loss=hinge",
                                                      "sweep.reg_params=[0.0, 0.01]", "sweep.id=cancer-1",
                                                      "tracking.registered_model=cancer"])
    lines: list[str] = []
    report = run_tracked_sweep(spark, config, progress=lines.append)
    assert any(line.startswith("small table: train.batch_size=256 gives") for line in lines), lines
    frame = spark.read.format("delta").load(tables["cancer"]).toPandas()
    model = mlflow.sklearn.load_model(report.model_uri)
    assert type(model.named_steps["model"]).__name__ == "SGDClassifier"
    ours = float((model.predict(frame.drop(columns=["target"])) == frame["target"]).mean())
    theirs = _sklearn_accuracy(frame, "target", LinearSVC())
    print(f"breast_cancer: hinge champion accuracy {ours:.4f}, scikit-learn LinearSVC {theirs:.4f}")
    assert ours >= theirs - 0.04, (ours, theirs)


def test_a_class_missing_from_training_is_reported_and_one_class_fails(spark: SparkSession, tmp_path: Path) -> None:
    """A class whose only rows are in the fixed validation split is counted and left out, not a crash; a label
    with one class fails naming the column."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    frame["kind"] = np.where(frame.a > 0.3, "high", np.where(frame.a < -0.3, "low", "mid"))
    frame["part"] = np.where(np.arange(400) % 4 == 0, "validation", "train")
    frame.loc[[0, 4, 8], "kind"] = "rare"  # validation rows only
    path = _delta(spark, frame, tmp_path / "kinds")
    config = make_config(path, tmp_path, [*COMMON, "data.label=kind", "model.loss=multinomial",
                                          "data.split=column", "data.split_column=part", "train.epochs=3",
                                          "sweep.id=rare-1", "tracking.registered_model=kinds"])
    lines: list[str] = []
    report = run_tracked_sweep(spark, config, progress=lines.append)
    assert "data: class 'rare' of label 'kind' has no training rows: its 3 validation rows are left out" in lines
    assert any(line.startswith("classes: 3 ('high', 'low', 'mid')") for line in lines)
    assert report.facts.validation_rows == 100 - 3
    single = _delta(spark, frame.assign(kind="same"), tmp_path / "single")
    with pytest.raises(DataError, match=r"label 'kind' has a single class \('same'\); multinomial needs at least 2"):
        read_feature_table(spark, make_config(single, tmp_path, ["data.label=kind"]).data, "multinomial")


def test_a_resumed_multinomial_sweep_equals_an_uninterrupted_one(spark: SparkSession, tables: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """Stopped like SIGTERM after epoch 2 and rerun with the same id: every class row's curves and weights have
    the same bits as a sweep that never stopped (the checkpoint holds the classes and the C-row models)."""
    import signal

    from pipelines.errors import TerminatedError
    from pipelines.orchestration.signals import StopRequest

    def config(sweep_id: str, workdir: Path):  # type: ignore[no-untyped-def]
        return make_config(tables["wine"], workdir, [
            *COMMON, "data.label=cultivar", "model.loss=multinomial", "train.epochs=4", "train.checkpoint_every=1",
            "sweep.pruning={enabled: true, min_epochs: 1, eta: 2}", f"sweep.id={sweep_id}",
            "tracking.registered_model=wine_resume"])

    uninterrupted = run_tracked_sweep(spark, config("wine-whole", tmp_path / "whole"), progress=None)
    stop = StopRequest()

    def progress(line: str) -> None:
        if line.startswith("epoch 2/"):
            stop.request(signal.SIGTERM)

    interrupted = config("wine-cut", tmp_path / "cut")
    with pytest.raises(TerminatedError):
        run_tracked_sweep(spark, interrupted, progress=progress, stop=stop)
    resumed = run_tracked_sweep(spark, interrupted, progress=None)
    assert resumed.resumed_from_epoch == 2
    for mine, theirs in zip(resumed.outcome.rates, uninterrupted.outcome.rates, strict=True):
        assert (mine.status, mine.kept_epoch) == (theirs.status, theirs.kept_epoch)
        for name, curve in mine.curves.items():
            assert curve.tobytes() == theirs.curves[name].tobytes(), name
        assert mine.weights.tobytes() == theirs.weights.tobytes()
        assert np.asarray(mine.intercept).tobytes() == np.asarray(theirs.intercept).tobytes()
