"""Nightly sweeps on a growing Delta table: the champion measured on each night's own rows, warm starts from
it, incremental reads since its version, drift, and the learning rate's history.

The table gains a version between nights (an append); registration follows the comparison on the same rows,
whatever the champion's recorded validation loss (measured on another version) says. Real Delta table, real
sqlite MLflow store and registry, the suite's Spark session.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import log_loss

from pipelines.config import Config, DataConfig
from pipelines.features.columns import model_input
from pipelines.features.split import SPLIT_COLUMN, VALIDATION
from pipelines.lakehouse.demo_data import churn_features, write_demo_table
from pipelines.lakehouse.history import learning_rate_history
from pipelines.lakehouse.reader import read_feature_table
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.orchestration.training import split_table
from pipelines.tracking.registry import CHAMPION, ChampionCheck, challenge
from tests.conftest import make_config

MODEL = "nightly_churn"
WEAK = ["sweep.learning_rates=[0.0001]", "train.epochs=1"]
STRONG = ["sweep.learning_rates=[0.1, 0.3]", "train.epochs=3"]
APPENDED = 1500


def night(table: Path, sweep_id: str, *overrides: str) -> Config:
    # every region kept (one-hot): no category the champion kept falls into a later night's 'other', so a warm
    # start carries the champion's function exactly
    return make_config(str(table), table.parent, [
        "demo.rows=4000", "demo.append_rows=400", "demo.partitions=2", "features.max_categories=200",
        f"sweep.id={sweep_id}", "tracking.experiment=nightly", f"tracking.registered_model={MODEL}", *overrides])


def sweep(spark: SparkSession, config: Config) -> tuple[SweepReport, list[str]]:
    lines: list[str] = []
    return run_tracked_sweep(spark, config, progress=lines.append), lines


def champion_loss_by_sklearn(spark: SparkSession, config: Config, data: DataConfig, version: str
                             ) -> tuple[float, int]:
    """The registered ``version``'s log loss on the validation rows of ``data``, computed by scikit-learn from
    the loaded model's probabilities (not by lrsweep's evaluation)."""
    table = read_feature_table(spark, data, config.model.loss)
    rows = split_table(table, data, config.train.seed).filter(F.col(SPLIT_COLUMN) == F.lit(VALIDATION))
    frame = rows.select(table.label, *[model_input(c, family) for c, family in table.columns.used.items()]) \
        .toPandas()
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    probability = model.predict_proba(frame.drop(columns=[table.label]))[:, 1]
    return float(log_loss(frame[table.label].to_numpy(), probability, labels=[0.0, 1.0])), len(frame)


def test_three_nights_on_a_growing_table(spark: SparkSession, tmp_path: Path) -> None:
    table = tmp_path / "churn"
    nightly = ["data.since_version=champion", "train.warm_start=champion"]
    first = night(table, "night-1", "data.version=1", *nightly, *WEAK)
    write_demo_table(spark, first.demo, first.data.table)  # versions 0 and 1
    report, lines = sweep(spark, first)
    # the first night: no champion, so the whole version and a cold start, both said; registered
    assert report.table.ref.since_version is None and report.table.rows_read == 4400
    assert any(line.startswith("data.since_version=champion: no champion") for line in lines), lines
    assert any(line.startswith("warm start: no champion") for line in lines), lines
    assert report.registration is not None and report.registration.reason.startswith("no champion yet")
    client = MlflowClient(tracking_uri=first.tracking.uri)
    # the recorded validation loss (version 1's rows) says no challenger can win: it must not be what decides
    client.set_model_version_tag(MODEL, "1", "lrsweep.val_loss", "1e-09")

    churn_features(spark, APPENDED, seed=11, partitions=1, first_id=4400, null_fraction=0.0) \
        .write.format("delta").mode("append").save(first.data.table)  # the nightly append: version 2
    second = night(table, "night-2", *nightly, *STRONG, "tracking.drift_threshold=1e-6")
    report, lines = sweep(spark, second)

    # incremental: only the appended rows, in the output and in lineage
    assert report.table.rows_read == APPENDED and report.table.rows == APPENDED
    [said] = [line for line in lines if line.startswith("sweep night-2: ")]
    assert f"at versions 2..2 (rows added after version 1, appends), {APPENDED} rows" in said, said
    parent = client.get_run(report.parent_run_id)
    params, metrics = parent.data.params, parent.data.metrics
    assert params["since_version"] == "1" and params["table_version"] == "2"
    [dataset] = parent.inputs.dataset_inputs
    assert dataset.dataset.name == "churn@v2-v2" and '"since_version": 1' in dataset.dataset.source
    assert f'"num_rows": {APPENDED}' in dataset.dataset.profile

    # the champion measured on this night's validation rows, by the same metrics; scikit-learn agrees
    champion_loss, challenger_loss = metrics["champion_val_loss"], metrics["challenger_val_loss"]
    best = report.outcome.best
    assert best is not None and challenger_loss == best.final_metrics()["val_loss"]
    expected, rows = champion_loss_by_sklearn(spark, second, second.data.model_copy(update={"since_version": 1}),
                                              "1")
    assert rows == report.facts.validation_rows
    assert champion_loss == pytest.approx(expected, rel=1e-9)
    assert {"champion_val_auc", "champion_val_accuracy"} <= set(metrics)
    assert parent.data.tags["lrsweep.champion_version"] == "1"
    [said] = [line for line in lines if line.startswith("champion: ")]
    assert f"on this sweep's {rows} validation rows of versions 2..2" in said and "(trained on version 1)" in said

    # warm start: every grid point's step 0 is the champion's loss on these rows
    assert params["warm_start_version"] == "1"
    [said] = [line for line in lines if line.startswith("warm start: ")]
    assert f"starts from {MODEL} version 1 (trained on version 1)" in said and said.endswith("exactly"), said
    for child_id in report.child_run_ids:
        assert child_id is not None
        [step0] = [m.value for m in client.get_metric_history(child_id, "val_loss") if m.step == 0]
        assert step0 == pytest.approx(champion_loss, rel=1e-9)
    assert abs(champion_loss - np.log(2)) > 1e-5  # not a cold start's log 2 (the weak champion is near it)

    # drift from version 1's training rows: every scored feature on the parent; above the threshold, a warning
    drift = {key.removeprefix("drift_psi/"): value for key, value in metrics.items() if key.startswith("drift_psi/")}
    assert {"tenure_months", "plan", "region"} <= set(drift) and all(v >= 0 for v in drift.values())
    [warned] = [line for line in lines if line.startswith("warning: drift against")]
    assert f"{MODEL} version 1's training rows" in warned and "tracking.drift_threshold=1e-06" in warned

    # the decision follows the comparison on the same rows (the tampered recorded loss would have kept it)
    wins, _ = challenge("if_better", challenger_loss, ChampionCheck("1", {"loss": champion_loss, "count": rows}),
                        0.001)
    assert wins and challenger_loss < champion_loss * 0.999
    registration = report.registration
    assert registration is not None and registration.decision == "registered", registration
    assert f"on the same {rows} validation rows" in registration.reason and "the challenger wins" in registration.reason
    new = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert str(new.version) == registration.version == "2"
    assert float(new.tags["lrsweep.champion_val_loss"]) == champion_loss
    assert float(new.tags["lrsweep.challenger_val_loss"]) == challenger_loss
    assert new.tags["lrsweep.replaced_version"] == "1"
    assert new.tags["lrsweep.data_version"] == "2" and new.tags["lrsweep.data_since_version"] == "1"

    # the third night reads the same rows and trains a weak model; the champion's recorded loss is tampered to
    # lose, but on the same rows the champion wins and stays
    client.set_model_version_tag(MODEL, "2", "lrsweep.val_loss", "99.0")
    third = night(table, "night-3", "data.since_version=1", *WEAK)
    report3, _ = sweep(spark, third)
    assert report3.registration is not None and report3.registration.decision == "kept_champion"
    assert "the champion stays" in report3.registration.reason
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"
    # version 2 measured on the rows it was chosen on: lrsweep's evaluation of the loaded model agrees with the
    # engine's validation loss of the same weights
    metrics3 = client.get_run(report3.parent_run_id).data.metrics
    assert metrics3["champion_val_loss"] == pytest.approx(challenger_loss, rel=1e-12)

    # the learning rate's history, from the results table: one row per night, with the registry's decisions
    history = learning_rate_history(spark, third.output.results_table, third.data.table)
    assert list(history["sweep_id"]) == ["night-1", "night-2", "night-3"]
    assert list(history["data_version"]) == [1, 2, 2]
    assert [None if np.isnan(v) else int(v) for v in history["data_since_version"]] == [None, 1, 1]
    assert list(history["registration"]) == ["registered:1", "registered:2", "kept_champion:"]
    assert history["best_learning_rate"][1] == best.learning_rate and history["best_val_loss"][1] == challenger_loss
    figures = {a.path for a in client.list_artifacts(report3.parent_run_id, "figures")}
    assert "figures/learning_rate_history.png" in figures


def test_a_champion_whose_column_is_gone_is_reported_and_replaced(spark: SparkSession, tmp_path: Path) -> None:
    model = "nightly_dropped_column"
    table = str(tmp_path / "churn")
    first = make_config(table, tmp_path, ["demo.rows=3000", "demo.append_rows=300", "demo.partitions=2",
                                          "sweep.id=dropped-1", f"tracking.registered_model={model}", *WEAK])
    write_demo_table(spark, first.demo, table)
    sweep(spark, first)
    later = make_config(table, tmp_path, ["sweep.id=dropped-2", f"tracking.registered_model={model}",
                                          "data.exclude=[customer_id, lifetime_value, support_calls_90d]", *WEAK])
    report, lines = sweep(spark, later)
    [said] = [line for line in lines if line.startswith("champion: ")]
    assert "cannot be measured on this sweep's rows" in said and "'support_calls_90d'" in said, said
    assert report.registration is not None and report.registration.decision == "registered"
    assert "cannot be measured" in report.registration.reason
    client = MlflowClient(tracking_uri=later.tracking.uri)
    assert "champion_val_loss" not in client.get_run(report.parent_run_id).data.metrics
    version = client.get_model_version_by_alias(model, CHAMPION)
    assert version.tags["lrsweep.replaced_version"] == "1" and np.isfinite(float(version.tags["lrsweep.val_loss"]))
