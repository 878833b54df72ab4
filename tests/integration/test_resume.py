"""Sweeps that survive interruption, in-process on real Delta tables and a real sqlite MLflow store.

A sweep stopped at an epoch boundary (as a signal stops it) and resumed with the same sweep id must equal an
uninterrupted sweep bit for bit: curves, kept models, statuses, results rows and MLflow histories; and that
for every kind of state a checkpoint carries (optimizer moments, early stopping, pruning, adaptive rates,
seeds, auto rounds). The results table and MLflow fill up while the sweep trains.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from jobs import train_sweep
from pipelines.cli import run_job
from pipelines.config import Config
from pipelines.errors import TerminatedError
from pipelines.orchestration.signals import StopRequest
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID
from tests.conftest import make_config, table_overrides
from tests.sweeps import assert_same_outcome, sweep_rows

EXPERIMENT = "it-resume"


def _config(table: str, workdir: Path, sweep_id: str, *overrides: str) -> Config:
    return make_config(table, workdir, [
        "data.label=label", "data.exclude=[]", "train.epochs=6", "train.checkpoint_every=2",
        "train.num_partitions=2", "train.batch_size=64", "sweep.learning_rates=[0.01, 0.1, 1.0, 40.0]",
        f"sweep.id={sweep_id}", f"tracking.experiment={EXPERIMENT}", "tracking.register_when=never", *overrides])


def _stopped_at(spark: SparkSession, config: Config, epoch: int) -> None:
    """Run the sweep and stop it like SIGTERM does once epoch ``epoch`` is reported."""
    stop = StopRequest()

    def progress(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            stop.request(signal.SIGTERM)

    with pytest.raises(TerminatedError, match=f"at epoch {epoch}; rerun with sweep.id="):
        run_tracked_sweep(spark, config, progress=progress, stop=stop)


def _histories(client: MlflowClient, report: SweepReport, metric: str) -> dict[float, list[tuple[int, float]]]:
    histories = {}
    for rate, run_id in zip(report.outcome.rates, report.child_run_ids, strict=True):
        assert run_id is not None
        points = client.get_metric_history(run_id, metric)
        histories[rate.learning_rate] = sorted((m.step, m.value) for m in points)
    return histories


@pytest.mark.parametrize(
    "settings",
    [
        ["train.optimizer=adam", "train.schedule={name: cosine, warmup_epochs: 1}"],
        ["train.algorithm=gd", "train.optimizer=momentum", "sweep.pruning={enabled: true, min_epochs: 1, eta: 2}"],
        ["train.optimizer=rmsprop", "sweep.early_stopping={enabled: true, patience: 1}", "sweep.seeds=[3, 4]"],
        ["train.schedule={name: adaptive, n_iter_no_change: 1, tol: 0.0}", "train.sync_every=5"],
    ],
    ids=["adam-cosine", "gd-pruning", "early_stopping-seeds", "adaptive-sync_every"],
)
def test_a_resumed_sweep_equals_an_uninterrupted_one(spark: SparkSession, synthetic_tables: dict[str, str],
                                                     tmp_path: Path, settings: list[str]) -> None:
    table = synthetic_tables["logistic"]
    uninterrupted = run_tracked_sweep(spark, _config(table, tmp_path, "straight", *settings), progress=None)
    config = _config(table, tmp_path, "interrupted", *settings)
    _stopped_at(spark, config, 3)
    resumed = run_tracked_sweep(spark, config, progress=None)
    assert resumed.resumed_from_epoch == 3
    assert_same_outcome(resumed.outcome, uninterrupted.outcome)
    pd.testing.assert_frame_equal(sweep_rows(spark, config.output.results_table, "interrupted"),
                                  sweep_rows(spark, config.output.results_table, "straight"))
    client = MlflowClient(tracking_uri=config.tracking.uri)
    for metric in ("train_loss", "val_loss"):
        assert _histories(client, resumed, metric) == _histories(client, uninterrupted, metric)


def test_an_auto_sweep_resumes_inside_its_second_round(spark: SparkSession, synthetic_tables: dict[str, str],
                                                       tmp_path: Path) -> None:
    table = synthetic_tables["logistic"]
    auto = ["sweep.learning_rates=auto", "sweep.auto_num=3", "sweep.refine=true", "range_test.num_steps=30",
            "train.epochs=4"]
    uninterrupted = run_tracked_sweep(spark, _config(table, tmp_path, "auto-straight", *auto), progress=None)
    config = _config(table, tmp_path, "auto-interrupted", *auto)
    lines: list[str] = []
    stop = StopRequest()

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 2/") and any(seen.startswith("refining") for seen in lines):
            stop.request(signal.SIGTERM)  # in round 2

    with pytest.raises(TerminatedError):
        run_tracked_sweep(spark, config, progress=progress, stop=stop)
    resumed = run_tracked_sweep(spark, config, progress=None)
    assert resumed.resumed_from_epoch == 2 and resumed.range_test is None  # the test is not run again
    assert resumed.suggested_learning_rate == uninterrupted.suggested_learning_rate
    for mine, theirs in zip(resumed.rounds, uninterrupted.rounds, strict=True):
        assert mine.points == theirs.points
        assert_same_outcome(mine.outcome, theirs.outcome)
    pd.testing.assert_frame_equal(sweep_rows(spark, config.output.results_table, "auto-interrupted"),
                                  sweep_rows(spark, config.output.results_table, "auto-straight"))


def test_results_and_mlflow_fill_up_while_the_sweep_trains(spark: SparkSession, synthetic_tables: dict[str, str],
                                                           tmp_path: Path) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "live", "train.epochs=8")
    client = MlflowClient(tracking_uri=config.tracking.uri)
    seen: dict[str, object] = {}

    def progress(line: str) -> None:
        if not line.startswith("epoch 6/"):
            return
        deadline = time.monotonic() + 30  # the journal and the live view work in the background
        while time.monotonic() < deadline:
            # the table exists once its first commit does (the folder comes first, while the journal writes it)
            created = (tmp_path / "results" / "_delta_log" / f"{0:020d}.json").exists()
            epochs = set(sweep_rows(spark, config.output.results_table, "live").epoch) if created else set()
            experiment = client.get_experiment_by_name(EXPERIMENT)
            assert experiment is not None
            children = client.search_runs([experiment.experiment_id],
                                          f"tags.`{TAG_SWEEP_ID}` = 'live' AND tags.`{TAG_ROLE}` = 'child'")
            points = [len(client.get_metric_history(c.info.run_id, "val_loss")) for c in children]
            if {1, 2, 3, 4} <= epochs and len(children) == 4 and min(points) >= 5:
                break
            time.sleep(0.5)
        seen.update(epochs=epochs, points=points, statuses={c.info.status for c in children})

    report = run_tracked_sweep(spark, config, progress=progress)
    assert {1, 2, 3, 4} <= seen["epochs"]  # type: ignore[operator]  # appended at the checkpoints of epochs 2, 4
    assert min(seen["points"]) >= 5  # type: ignore[call-overload]  # steps 0..4 at least, while training
    assert seen["statuses"] == {"RUNNING"}
    rows = sweep_rows(spark, config.output.results_table, "live")
    assert len(rows) == sum(rate.epochs_run for rate in report.outcome.rates)
    assert set(rows.status) <= {"completed", "diverged"}  # the final statuses replaced "running"
    checkpoints = list((tmp_path / "checkpoints" / "live").glob("checkpoint-*.npz"))
    assert len(checkpoints) == 1  # older checkpoints are removed once the sweep completes


def test_every_rate_diverging_is_exit_3_with_results_and_finished_runs(
    spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*table_overrides(synthetic_tables["squared"], tmp_path), "--set", "data.label=target",
            "--set", "data.exclude=[]", "--set", "model.loss=squared", "--set", "sweep.id=all-diverge",
            "--set", "sweep.learning_rates=[50.0, 500.0]", "--set", "train.epochs=3",
            "--set", f"tracking.experiment={EXPERIMENT}"]
    assert run_job(train_sweep.main, argv) == 3
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: sweep all-diverge: every rate diverged or was stopped; nothing was registered (see the summary; "
        "try lower learning rates)"]
    assert "Traceback" not in captured.out + captured.err
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`lrsweep.sweep_id` = 'all-diverge'")
    assert {run.info.status for run in runs} == {"FINISHED"} and len(runs) == 3
    [parent] = [run for run in runs if run.data.tags[TAG_ROLE] == "parent"]
    assert parent.data.tags["lrsweep.best"].startswith("none: every rate diverged")
    assert "lrsweep.registration" not in parent.data.tags
    rows = spark.read.format("delta").load(str(tmp_path / "results")).toPandas()
    assert set(rows.status) == {"diverged"} and not rows.is_best.any()


def test_overflowing_features_make_rates_diverge_without_crashing_a_worker(
    spark: SparkSession, tmp_path: Path,
) -> None:
    path = str(tmp_path / "huge")
    spark.range(600).selectExpr("id % 2 AS label", "(id % 7) * 1e200 AS x", "id % 5 AS z") \
        .write.format("delta").save(path)
    config = make_config(path, tmp_path, ["data.label=label", "data.exclude=[]", "features.standardize=false",
                                          "sweep.learning_rates=[0.1, 1.0]", "train.epochs=2", "sweep.id=huge",
                                          f"tracking.experiment={EXPERIMENT}"])
    report = run_tracked_sweep(spark, config, progress=None)
    assert [rate.status for rate in report.outcome.rates] == ["diverged", "diverged"]
    assert report.outcome_error is not None and report.outcome_error.exit_code == 3
    for rate in report.outcome.rates:  # the initial models' metrics are finite, later ones NaN, never junk
        assert math.isfinite(rate.initial["val_auc"])
