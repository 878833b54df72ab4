"""A tracked sweep against a real sqlite MLflow store and real Delta tables (in-process, shared Spark).

The module's sweep (``swept``) is only read by the tests that use it; a test that changes runs, the registry
or the tables makes a sweep of its own (its own sweep id, and a workdir of its own where it writes).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from pyspark.sql import SparkSession

from jobs import score as score_job
from jobs import train_sweep
from pipelines.cli import run_job
from pipelines.config import Config
from pipelines.errors import OutputError, TerminatedError
from pipelines.features.columns import model_input
from pipelines.orchestration.score import score_table
from pipelines.orchestration.signals import StopRequest
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID
from tests.conftest import make_config, table_overrides

GRID = "[0.01, 0.1, 1000.0]"
EPOCHS = 3
SWEEP_ID = "it-sweep-1"


def _config(table: str, workdir: Path, *overrides: str) -> Config:
    return make_config(table, workdir, [
        f"sweep.learning_rates={GRID}", f"train.epochs={EPOCHS}", f"sweep.id={SWEEP_ID}",
        "tracking.experiment=it-sweeps", "tracking.registered_model=it_churn", *overrides])


def _runs(client: MlflowClient, sweep_id: str, role: str) -> list[Run]:
    experiment = client.get_experiment_by_name("it-sweeps")
    assert experiment is not None
    runs: list[Run] = client.search_runs(
        [experiment.experiment_id], f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' AND tags.`{TAG_ROLE}` = '{role}'")
    return runs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tracked")


def _sweep_rows(spark: SparkSession, config: Config, sweep_id: str) -> pd.DataFrame:
    frame = spark.read.format("delta").load(config.output.results_table)
    return frame.where(frame["sweep_id"] == sweep_id).toPandas()


@pytest.fixture(scope="module")
def swept(spark: SparkSession, demo_table: str, workdir: Path) -> Iterator[tuple[Config, SweepReport]]:
    config = _config(demo_table, workdir)
    report = run_tracked_sweep(spark, config, progress=None)
    yield config, report


@pytest.fixture(scope="module")
def client(swept: tuple[Config, SweepReport]) -> MlflowClient:
    return MlflowClient(tracking_uri=swept[0].tracking.uri)


def test_run_tree_params_tags_and_dataset(swept: tuple[Config, SweepReport], client: MlflowClient,
                                          demo_table: str) -> None:
    _, report = swept
    parents, children = _runs(client, SWEEP_ID, "parent"), _runs(client, SWEEP_ID, "child")
    assert [p.info.run_id for p in parents] == [report.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["lr=0.01", "lr=0.1", "lr=1000"]
    assert all(c.data.tags["mlflow.parentRunId"] == report.parent_run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    params = parent.data.params
    assert params["table"] == demo_table and params["table_version"] == "1" and params["label"] == "churned"
    assert params["loss"] == "logistic" and params["epochs"] == str(EPOCHS)
    assert params["learning_rates"] == "0.01,0.1,1000.0" and int(params["num_features"]) >= 25
    assert {"algorithm", "batch_size", "schedule", "optimizer", "seed"} <= set(params)
    tags = parent.data.tags
    assert tags[TAG_SWEEP_ID] == SWEEP_ID and tags["lrsweep.spark_master"] == "local[2]"
    assert len(tags["lrsweep.code_version"]) >= 5
    for run in [parent, *children]:
        [dataset_input] = run.inputs.dataset_inputs
        source = dataset_input.dataset.source
        assert demo_table in source and '"delta_table_version": 1' in source.replace("'", '"'), source
        assert dataset_input.dataset.source_type == "delta_table"
        assert '"num_rows": 4' in dataset_input.dataset.profile  # the exact row count, no counting job


def test_child_histories_are_finite_per_epoch_with_statuses(swept: tuple[Config, SweepReport],
                                                            client: MlflowClient) -> None:
    _, report = swept
    children = {c.info.run_name: c for c in _runs(client, SWEEP_ID, "child")}
    for name in ("lr=0.01", "lr=0.1"):
        child = children[name]
        assert child.data.tags["status"] == "completed" and child.data.params["learning_rate"] in ("0.01", "0.1")
        for metric in ("train_loss", "val_loss", "val_accuracy", "val_auc"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(0, EPOCHS + 1)), metric  # step 0: the start
            assert all(math.isfinite(m.value) for m in history)
        assert "val_log_loss" not in child.data.metrics  # for logistic loss it is val_loss: logged once
    starts = {client.get_metric_history(c.info.run_id, "train_loss")[0].value for c in children.values()}
    assert len(starts) == 1  # every rate starts from the same initial model
    diverged = children["lr=1000"]
    assert diverged.data.tags["status"] == "diverged"
    at = int(diverged.data.metrics["diverged_at_epoch"])
    assert 1 <= at <= EPOCHS and diverged.data.tags["diverged_at_epoch"] == str(at)
    for metric in ("train_loss", "val_loss"):
        history = client.get_metric_history(diverged.info.run_id, metric)
        assert all(math.isfinite(m.value) for m in history) and all(0 <= m.step <= at for m in history)
    # The parent's summary: best rate, its metrics and the time split.
    parent = client.get_run(report.parent_run_id)
    best = report.outcome.best
    assert best is not None and best.learning_rate in (0.01, 0.1)
    assert parent.data.metrics["best_learning_rate"] == best.learning_rate
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.final_metrics()["val_loss"])
    assert parent.data.metrics["rates_diverged"] == 1.0
    # timings are system metrics, apart from the model metrics in MLflow's UI
    assert parent.data.metrics["system/lrsweep_tracking_seconds"] > 0
    assert parent.data.metrics["system/lrsweep_training_seconds"] > 0
    assert not any("seconds" in name for name in parent.data.metrics if not name.startswith("system/"))
    artifacts = {a.path for a in client.list_artifacts(report.parent_run_id, "figures")}
    assert artifacts == {"figures/loss_curves.png", "figures/val_loss_vs_learning_rate.png",
                         "figures/learning_rate_history.png"}
    logged = mlflow.artifacts.load_dict(f"runs:/{report.parent_run_id}/results/rates.json")
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert sorted(table["learning_rate"]) == [0.01, 0.1, 1000.0] and int(table["best"].sum()) == 1


def test_champion_loads_without_spark_and_predicts_like_raw_coefficients(swept: tuple[Config, SweepReport],
                                                                         client: MlflowClient) -> None:
    _, report = swept
    assert report.registration is not None and report.registration.decision == "registered"
    champion = client.get_model_version_by_alias("it_churn", "champion")
    assert str(champion.version) == report.registration.version
    assert float(champion.tags["lrsweep.val_loss"]) == pytest.approx(
        report.outcome.best.final_metrics()["val_loss"])  # type: ignore[union-attr]
    model = mlflow.pyfunc.load_model("models:/it_churn@champion")
    features = list(report.table.features)
    assert model.metadata.get_input_schema().input_names() == features
    rng = np.random.default_rng(0)
    X = report.table.dataframe.select(*features).limit(50).toPandas()
    numbers = [name for name, family in report.table.columns.used.items() if family == "number"]
    X[numbers] = X[numbers] * rng.uniform(0.5, 1.5, size=(50, len(numbers)))
    X.loc[0, "plan"] = "a plan never seen"
    best = report.outcome.best
    assert best is not None
    encoding = report.facts.encoding
    # the numbers' coefficients mapped back to raw units, the rest (indicators, days, array elements) by encoding
    scales, means = encoding.scales, encoding.means
    dense = [c for c in encoding.dense_columns]
    number_positions = [i for i, c in enumerate(dense) if c.kind == "number"]
    raw = X[[dense[i].column for i in number_positions]].to_numpy()
    raw_weights = best.weights[number_positions] / scales[number_positions]
    others = encoding.transform(X).toarray()
    others[:, number_positions] = 0.0
    margin = raw @ raw_weights - raw_weights @ means[number_positions] + others @ best.weights + best.intercept
    expected = 1.0 / (1.0 + np.exp(-margin))
    predicted = np.asarray(model.predict(X))
    assert predicted.shape == (50, 2)
    np.testing.assert_allclose(predicted[:, 1], expected, rtol=0, atol=1e-9)


def test_results_table_has_one_row_per_rate_and_epoch(spark: SparkSession, swept: tuple[Config, SweepReport]
                                                      ) -> None:
    config, report = swept
    rows = _sweep_rows(spark, config, SWEEP_ID)
    expected = sum(r.epochs_run for r in report.outcome.rates)
    assert len(rows) == expected == report.results_rows
    assert not rows.duplicated(["sweep_id", "learning_rate", "epoch"]).any()
    completed = rows[rows.learning_rate == 0.1].sort_values("epoch")
    assert completed.epoch.tolist() == list(range(1, EPOCHS + 1))
    assert completed.status.unique().tolist() == ["completed"] and completed.val_auc.notna().all()
    assert completed.val_rmse.isna().all()  # squared-loss columns stay empty for a logistic sweep
    assert set(rows.child_run_id) == set(report.child_run_ids)
    assert (rows.parent_run_id == report.parent_run_id).all() and (rows.data_version == 1).all()
    assert rows[rows.is_best].learning_rate.nunique() == 1
    diverged = rows[rows.learning_rate == 1000.0]
    assert (diverged.status == "diverged").all()
    assert (rows["round"] == 1).all() and "val_log_loss" not in rows.columns
    # a short sweep is journaled at its end only: its rows, with the registry's decision, in one commit, no MERGE
    assert set(rows.registration.dropna()) == {f"registered:{report.registration.version}"}  # type: ignore[union-attr]
    assert rows.registration.notna().sum() == rows.is_best.sum() == EPOCHS
    history = spark.sql(f"DESCRIBE HISTORY delta.`{config.output.results_table}`").toPandas()
    assert history.operation.tolist() == ["WRITE"], history[["version", "operation"]]


def test_rerun_with_the_same_sweep_id_trains_nothing_adds_nothing_and_repairs_runs(
    spark: SparkSession, demo_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    sweep_id = "it-rerun"
    config = _config(demo_table, tmp_path, f"sweep.id={sweep_id}", "tracking.registered_model=it_rerun")
    first = run_tracked_sweep(spark, config, progress=None)
    client = MlflowClient(tracking_uri=config.tracking.uri)

    def snapshot() -> tuple[int, int, int, int, int]:
        children = _runs(client, sweep_id, "child")
        histories = sum(len(client.get_metric_history(c.info.run_id, "val_loss")) for c in children)
        parent_inputs = len(client.get_run(first.parent_run_id).inputs.dataset_inputs)
        versions = len(client.search_model_versions("name='it_rerun'"))
        return (len(_runs(client, sweep_id, "parent")) + len(children), histories, parent_inputs, versions,
                len(_sweep_rows(spark, config, sweep_id)))

    before = snapshot()
    argv = [*table_overrides(demo_table, tmp_path), "--set", "tracking.experiment=it-sweeps",
            "--set", "tracking.registered_model=it_rerun", "--set", f"sweep.learning_rates={GRID}",
            "--set", f"train.epochs={EPOCHS}", "--set", f"sweep.id={sweep_id}"]
    assert run_job(train_sweep.main, argv) == 0
    out = capsys.readouterr().out
    assert f"sweep {sweep_id}: parent run {first.parent_run_id} (resumed from epoch {EPOCHS})" in out
    assert "already in" in out and "already_done" in out
    assert "*" in out and "val_auc" in out
    assert not [line for line in out.splitlines() if line.startswith("epoch ")]  # nothing trained
    assert snapshot() == before
    assert client.get_run(first.parent_run_id).data.metrics["resumed_from_epoch"] == EPOCHS

    # An attempt that died while logging a child: that child is repaired in place, the others are reused.
    children = {c.info.run_name: c.info.run_id for c in _runs(client, sweep_id, "child")}
    client.set_terminated(children["lr=0.1"], "FAILED")
    report = run_tracked_sweep(spark, config, progress=None)
    assert snapshot() == before
    assert report.child_run_ids == first.child_run_ids
    assert client.get_run(children["lr=0.1"]).info.status == "FINISHED"
    assert all(run.info.status == "FINISHED" for run in _runs(client, sweep_id, "child"))


def test_bad_results_location_fails_naming_it_before_any_run_starts(
    spark: SparkSession, demo_table: str, workdir: Path, client: MlflowClient,
) -> None:
    not_delta = workdir / "not_a_table"
    not_delta.mkdir()
    (not_delta / "part-0.csv").write_text("a,b\n1,2\n")
    config = _config(demo_table, workdir, f"output.results_table={not_delta}", "sweep.id=it-bad-output")
    with pytest.raises(OutputError, match=f"output.results_table {not_delta} exists and is not a Delta table"):
        run_tracked_sweep(spark, config, progress=None)
    assert not _runs(client, "it-bad-output", "parent")  # checked before any run was started
    assert mlflow.active_run() is None


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_at_a_safe_point_checkpoints_and_ends_runs_killed(
    spark: SparkSession, demo_table: str, tmp_path: Path, signum: int, exit_code: int,
) -> None:
    sweep_id = f"it-killed-{signum}"
    config = _config(demo_table, tmp_path, f"sweep.id={sweep_id}", "tracking.register_when=never",
                     "train.epochs=6", "train.checkpoint_every=4")
    stop = StopRequest()

    def signal_during_training(line: str) -> None:
        if line.startswith("epoch 2/"):  # training is under way; the next boundary is the safe point
            os.kill(os.getpid(), signum)

    with stop.install(spark), pytest.raises(TerminatedError) as raised:
        run_tracked_sweep(spark, config, progress=signal_during_training, stop=stop)
    assert raised.value.exit_code == exit_code
    assert f"terminated by {signal.Signals(signum).name} at epoch 2; rerun with sweep.id={sweep_id}" \
        in str(raised.value)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    [parent] = _runs(client, sweep_id, "parent")
    assert parent.info.status == "KILLED"
    assert all(c.info.status == "KILLED" for c in _runs(client, sweep_id, "child"))
    # the state at the stop is saved, though the next regular checkpoint was two epochs away
    checkpoints = list((tmp_path / "checkpoints" / sweep_id).glob("checkpoint-*.npz"))
    assert len(checkpoints) == 1
    assert set(_sweep_rows(spark, config, sweep_id).epoch) == {1, 2}  # the journal has what was trained

    resumed = run_tracked_sweep(spark, config, progress=None)
    assert resumed.resumed_from_epoch == 2 and resumed.tracking_problem is None
    rows = _sweep_rows(spark, config, sweep_id)
    assert not rows.duplicated(["learning_rate", "epoch"]).any()
    assert len(rows) == sum(r.epochs_run for r in resumed.outcome.rates)
    assert client.get_run(resumed.parent_run_id).info.status == "FINISHED"


def test_if_better_keeps_a_better_champion(spark: SparkSession, demo_table: str, tmp_path: Path) -> None:
    good = _config(demo_table, tmp_path, "sweep.id=it-better", "tracking.registered_model=it_if_better")
    run_tracked_sweep(spark, good, progress=None)
    client = MlflowClient(tracking_uri=good.tracking.uri)
    champion_before = client.get_model_version_by_alias("it_if_better", "champion").version
    config = _config(demo_table, tmp_path, "sweep.id=it-worse", "sweep.learning_rates=[0.00001]",
                     "train.epochs=1", "tracking.registered_model=it_if_better")
    report = run_tracked_sweep(spark, config, progress=None)
    assert report.registration is not None and report.registration.decision == "kept_champion"
    assert "the champion stays" in report.registration.reason and "on the same" in report.registration.reason
    assert client.get_model_version_by_alias("it_if_better", "champion").version == champion_before
    assert client.get_run(report.parent_run_id).data.tags["lrsweep.registration"] == "kept_champion:"


def test_scoring_writes_predictions_with_lineage(spark: SparkSession, swept: tuple[Config, SweepReport],
                                                 demo_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    config, report = swept
    result = score_table(spark, config)
    assert result.written and result.model.name == "it_churn"
    assert result.model.version == report.registration.version  # type: ignore[union-attr]
    predictions = spark.read.format("delta").load(config.output.predictions_table).toPandas()
    assert len(predictions) == result.rows == report.table.rows_read
    scored = predictions[predictions.prediction.notna()]
    assert len(predictions) - len(scored) == result.rows_without_prediction == report.table.rows_dropped_null
    assert scored.prediction.between(0.0, 1.0).all()
    assert (scored.predicted_label == (scored.prediction >= 0.5).astype(int)).all()
    assert {"customer_id", "churned"} <= set(predictions.columns) and "tenure_months" not in predictions.columns
    assert (predictions.model_name == "it_churn").all() and (predictions.source_version == 1).all()
    assert (predictions.model_run_id == report.parent_run_id).all()
    assert (predictions.source_table == demo_table).all() and predictions.scored_at.notna().all()

    # Same predictions as the model applied without Spark, row for row.
    families = report.table.columns.used
    required = [name for name, family in families.items() if family != "string"]  # a null string is a category
    source = spark.read.format("delta").load(demo_table).select(
        "customer_id", *[model_input(name, family) for name, family in families.items()]).toPandas() \
        .dropna(subset=required)
    model = mlflow.pyfunc.load_model(result.model.uri)
    expected = pd.Series(np.asarray(model.predict(source[list(families)]))[:, 1], index=source.customer_id)
    np.testing.assert_allclose(scored.set_index("customer_id").prediction.loc[expected.index], expected,
                               rtol=0, atol=1e-12)

    # Scoring the same model version on the same table version again appends nothing.
    argv = ["--set", f"data.table={demo_table}", "--set", f"output.predictions_table={config.output.predictions_table}",
            "--set", f"output.results_table={config.output.results_table}",
            "--set", f"tracking.uri={config.tracking.uri}", "--set", "tracking.registered_model=it_churn"]
    assert run_job(score_job.main, argv) == 0
    assert "already had (nothing appended)" in capsys.readouterr().out
    assert spark.read.format("delta").load(config.output.predictions_table).count() == len(predictions)


def test_rerun_keeps_the_table_version_of_the_first_attempt(spark: SparkSession, workdir: Path) -> None:
    path = str(workdir / "growing")
    rows = "id % 2 AS label", "CAST(id % 7 AS DOUBLE) + (id % 2) AS x", "CAST(id % 5 AS DOUBLE) AS z"
    spark.range(400).selectExpr(*rows).write.format("delta").save(path)
    config = _config(path, workdir / "growing_out", "data.label=label", "data.exclude=[]", "sweep.id=it-pinned",
                     "sweep.learning_rates=[0.1]", "train.epochs=1", "tracking.register_when=never")
    first = run_tracked_sweep(spark, config, progress=None)
    spark.range(400, 600).selectExpr(*rows).write.format("delta").mode("append").save(path)
    again = run_tracked_sweep(spark, config, progress=None)
    assert first.table.ref.version == again.table.ref.version == 0 and again.resumed
    assert again.parent_run_id == first.parent_run_id and again.child_run_ids == first.child_run_ids
    assert not again.results_written
    assert spark.read.format("delta").load(config.output.results_table).count() == first.results_rows
    client = MlflowClient(tracking_uri=config.tracking.uri)
    assert client.get_run(first.parent_run_id).data.params["table_version"] == "0"


def test_show_and_history_read_the_results_table_while_mlflow_is_unreachable(
    spark: SparkSession, swept: tuple[Config, SweepReport], demo_table: str, workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines.cli import main
    from pipelines.orchestration.results import show_sweep, sweep_history
    from pipelines.reporting.tables import format_summary

    config, report = swept
    capsys.readouterr()
    argv = [*table_overrides(demo_table, workdir), "--set", "tracking.uri=http://127.0.0.1:9",
            "--set", "tracking.connect_timeout_seconds=1"]  # nothing listens there: MLflow is down
    assert main(["show", SWEEP_ID, *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"sweep {SWEEP_ID}: {demo_table} at version 1, logistic loss, 3 points (2 completed, 1 diverged)"
    assert "\n".join(out[1:6]) == format_summary(report.summary, "logistic")  # the job's own closing table
    assert out[-1] == f"parent run {report.parent_run_id}; rows in {config.output.results_table}"

    summary = show_sweep(config, SWEEP_ID, spark)  # from Python: the DataFrame
    assert summary["learning_rate"].tolist() == [0.01, 0.1, 1000.0] and summary["best"].sum() == 1
    assert report.outcome.best is not None
    best_val_loss = report.outcome.best.final_metrics()["val_loss"]
    assert summary.loc[summary["best"], "val_loss"].item() == pytest.approx(best_val_loss)

    assert main(["show", "no-such-sweep", *argv]) == 2  # a bad id: one line, exit 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: sweep 'no-such-sweep' has no rows in {config.output.results_table}; `lrsweep history` lists the "
        "sweeps of data.table"]

    assert main(["history", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"sweeps of {demo_table} (from {config.output.results_table}):")
    assert lines[1].split()[:3] == ["sweep_id", "data_version", "data_since_version"]
    history = sweep_history(config, spark)
    assert SWEEP_ID in history["sweep_id"].tolist() and any(line.startswith(f"{SWEEP_ID} ") for line in lines)
    mine = history[history["sweep_id"] == SWEEP_ID].iloc[0]
    assert mine["best_learning_rate"] == report.outcome.best.learning_rate
