"""Sweeps that survive the night: real faults against real ``spark-submit`` jobs and a real ``mlflow server``.

The tests inject the faults a nightly sweep meets (the MLflow server killed mid-sweep, the Python driver
killed with SIGKILL, SIGTERM/SIGINT from a scheduler, a kill in every stage that writes) and check what the README's
*Nightly runs* section promises: the exit code, the output, the results table (read with delta-rs, an
independent Delta reader), the MLflow runs and, after a rerun with the same ``sweep.id``, curves identical to an
uninterrupted sweep's. Faults share sweeps: each ``spark-submit`` costs 30-90 s here, so one sweep id goes
through SIGTERMs, a SIGKILL and an outage in turn, and another through a kill in every writing stage, after which
its registered champion loads from the server and ``spark-submit jobs/score.py`` scores the table with it.

The uninterrupted sweep (:func:`reference`) is run once per module, in-process against the same server, whose
live view is read while it trains; the tests compare with it. The ``spark-submit`` jobs' epochs are slowed by the
``sleep`` fault where a test must act at a known epoch (the sleep changes no result). Timings are bounded
generously: the suite shares two cores with other Spark jobs. The faults a sweep meets at its start, which need no
reference sweep, are in tests/e2e/test_store_faults.py, so that ``make test`` runs them beside these.
"""

from __future__ import annotations

import math
import re
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from pyspark.sql import SparkSession

from pipelines.config import load_config
from pipelines.orchestration.sweep import run_tracked_sweep
from tests.e2e.harness import BackgroundJob, MlflowServer, wait_for
from tests.sweeps import IDENTITY_COLUMNS

pytestmark = pytest.mark.slow

EXPERIMENT = "e2e-faults"
EPOCHS = 12
LEARNING_RATES = (0.01, 0.1, 1.0)
CHILDREN = {"lr=0.01", "lr=0.1", "lr=1"}
CURVES = ("train_loss", "val_loss")


def slowed(seconds: float) -> dict[str, str]:
    """Environment making each epoch of the sweep about ``2 * seconds`` longer (see pipelines.faults).

    Every training and evaluation task sleeps. The module's sweeps are small, so ``train.executor=auto`` runs
    their two partitions' tasks one after the other in the driver: each task sleeps ``seconds / 2``, and an
    epoch's four tasks (two training, two evaluation) add ``2 * seconds``, as a sleep of ``seconds`` per task
    did when the two partitions' tasks ran side by side on Spark's two cores (a training and an evaluation job)."""
    return {"LRSWEEP_INJECT_FAULT": f"sleep:seconds={seconds / 2}"}


def sweep_settings(table: str, workdir: Path, uri: str, sweep_id: str,
                   extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """The module's sweep: 3 rates, 12 epochs of Adam, a checkpoint every 2 epochs, outputs under ``workdir``."""
    return {"data.table": table, "output.results_table": workdir / "results",
            "output.predictions_table": workdir / "predictions", "output.checkpoints": workdir / "checkpoints",
            "tracking.uri": uri, "tracking.experiment": EXPERIMENT, "tracking.register_when": "never",
            "sweep.id": sweep_id, "sweep.learning_rates": list(LEARNING_RATES), "train.epochs": EPOCHS,
            "train.checkpoint_every": 2, "train.optimizer": "adam", "spark.shuffle_partitions": 2, **(extra or {})}


# ------------------------------------------------------------------------------------ what a sweep left


@dataclass
class SweepRuns:
    parent: Run
    children: dict[str, Run]  # by run name, e.g. "lr=0.1"

    @property
    def all(self) -> list[Run]:
        return [self.parent, *self.children.values()]

    def statuses(self) -> dict[str, str]:
        return {run.info.run_name: run.info.status for run in self.all}


def sweep_runs(client: MlflowClient, sweep_id: str, experiment: str = EXPERIMENT) -> SweepRuns:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], f"tags.`lrsweep.sweep_id` = '{sweep_id}'")
    parents = [run for run in runs if run.data.tags.get("lrsweep.role") == "parent"]
    assert len(parents) == 1, f"sweep {sweep_id}: {len(parents)} parent runs"
    children = {run.info.run_name: run for run in runs if run.data.tags.get("lrsweep.role") == "child"}
    assert len(children) == len([run for run in runs if run.data.tags.get("lrsweep.role") == "child"]), \
        f"sweep {sweep_id}: duplicated child runs"
    return SweepRuns(parents[0], children)


def history(client: MlflowClient, run: Run, metric: str) -> list[tuple[int, float]]:
    """Every ``(step, value)`` point MLflow holds for ``metric``, by step (duplicates kept)."""
    return sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, metric))


def histories(client: MlflowClient, runs: SweepRuns) -> dict[str, dict[str, list[tuple[int, float]]]]:
    return {name: {metric: history(client, child, metric) for metric in CURVES}
            for name, child in runs.children.items()}


def results(path: Path, sweep_id: str | None = None) -> pd.DataFrame:
    """The results table as delta-rs reads it (one sweep's rows with ``sweep_id``)."""
    from deltalake import DeltaTable

    frame = DeltaTable(str(path)).to_pandas()
    return frame if sweep_id is None else frame[frame.sweep_id == sweep_id]


def computed(frame: pd.DataFrame) -> pd.DataFrame:
    """What the rows say about the training (ids and write times dropped), in (round, rate, epoch) order."""
    return frame.drop(columns=list(IDENTITY_COLUMNS)).sort_values(["round", "learning_rate", "epoch"]) \
        .reset_index(drop=True)


def assert_every_epoch_once(frame: pd.DataFrame) -> None:
    """One row per (learning rate, epoch 1..12), nothing missing, nothing twice."""
    keys = list(zip(frame.learning_rate, frame.epoch, strict=True))
    assert len(keys) == len(set(keys)), f"duplicated rows: {pd.Series(keys).value_counts().head().to_dict()}"
    assert set(keys) == {(rate, epoch) for rate in LEARNING_RATES for epoch in range(1, EPOCHS + 1)}


def assert_results_equal_the_reference(table: Path, sweep_id: str, reference: Reference) -> None:
    """The sweep's results rows: every (rate, epoch) once, with the uninterrupted reference sweep's values."""
    rows = results(table, sweep_id)
    assert_every_epoch_once(rows)
    pd.testing.assert_frame_equal(computed(rows), computed(reference.results), check_exact=True)


def epochs_printed(job: BackgroundJob) -> list[int]:
    return [int(match.group(1)) for match in job.matches(rf"^epoch (\d+)/{EPOCHS}:")]


def closing_line_epoch(job: BackgroundJob, sweep_id: str) -> int:
    """N of the job's closing line ``sweep <id>: parent run <run id> (resumed from epoch N)``."""
    [match] = job.matches(rf"^sweep {re.escape(sweep_id)}: parent run \w+ \(resumed from epoch (\d+)\)$")
    return int(match.group(1))


def stopped_at_epoch(job: BackgroundJob, code: int, signal_name: str, exit_code: int, sweep_id: str) -> int:
    """Check a job stopped by a signal (exit code, one line saying how to resume); return its epoch."""
    assert code == exit_code, f"exit {code}, expected {exit_code}:\n{job.tail()}"
    lines = job.matches(rf"terminated by {signal_name} at epoch (\d+); rerun with sweep\.id={re.escape(sweep_id)} "
                        "to resume")
    assert len(lines) == 1, job.tail()
    return int(lines[0].group(1))


def tracebacks(job: BackgroundJob) -> list[str]:
    """Each Python traceback in the output, as ``<exception line> (in <file of the innermost frame>)``."""
    found, frame = [], None
    inside = False
    for line in job.lines():
        if line.startswith("Traceback (most recent call last)"):
            inside, frame = True, None
        elif inside and line.startswith("  File "):
            frame = line.split('"')[1] if '"' in line else line
        elif inside and not line.startswith(" "):
            found.append(f"{line} (in {frame})")
            inside = False
    return found


def job_log(workdir: Path, name: str) -> Path:
    return workdir / "logs" / f"{name}.log"


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One ``mlflow server`` (sqlite store) for the module's sweeps that need a healthy server."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=server.uri)


@dataclass
class Reference:
    """An uninterrupted sweep, and what the server held of it while it trained."""

    sweep_id: str
    live_val_loss_steps: dict[str, list[int]]  # child -> steps in MLflow once epoch 6 of 12 was reported
    histories: dict[str, dict[str, list[tuple[int, float]]]]
    results: pd.DataFrame


@pytest.fixture(scope="module")
def reference(server: MlflowServer, client: MlflowClient, spark: SparkSession, demo_table: str,
              tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The module's sweep, uninterrupted, run by the suite's own session against the server (the interrupted
    ``spark-submit`` jobs must end with its bits: the blocks, hence the results, depend on the process no more than
    on the master, see tests/e2e/test_cluster.py). At epoch 6 the run tree is read from the server while the sweep
    goes on, as the MLflow UI would (the live view posts in the background, so up to 30 s are allowed)."""
    workdir = tmp_path_factory.mktemp("reference")
    sweep_id = "reference"
    settings = sweep_settings(demo_table, workdir, server.uri, sweep_id)
    config = load_config(overrides=[f"{key}={value}" for key, value in settings.items()])
    live: dict[str, list[int]] = {}

    def at_epoch_6(line: str) -> None:
        if not line.startswith(f"epoch 6/{EPOCHS}:"):
            return

        def steps() -> dict[str, list[int]] | None:
            runs = sweep_runs(client, sweep_id)
            found = {name: [step for step, _ in history(client, child, "val_loss")]
                     for name, child in runs.children.items()}
            return found if len(found) == len(CHILDREN) and min(map(len, found.values())) >= 4 else None

        live.update(wait_for(steps, 30, "four epochs of every child's val_loss on the server"))

    run_tracked_sweep(spark, config, progress=at_epoch_6)
    runs = sweep_runs(client, sweep_id)
    return Reference(sweep_id, live, histories(client, runs), results(workdir / "results", sweep_id))


# ---------------------------------------------------------------------------------------------- tests


def test_the_live_view_has_each_epochs_points_while_the_sweep_trains(reference: Reference) -> None:
    assert set(reference.live_val_loss_steps) == CHILDREN
    for name, steps in reference.live_val_loss_steps.items():  # read at epoch 6 of 12, while training went on
        assert 4 <= len(steps) <= 7, f"{name}: steps {steps} of val_loss in MLflow at epoch 6"
        assert steps == list(range(len(steps))), f"{name}: val_loss steps {steps}"
    for name, curves in reference.histories.items():  # and all of it at the end
        for metric, points in curves.items():
            assert [step for step, _ in points] == list(range(EPOCHS + 1)), f"{name} {metric}"
            assert all(math.isfinite(value) for _, value in points)
    assert_every_epoch_once(reference.results)


def checkpointed_epoch(root: Path, sweep_id: str) -> int:
    """The epoch of the sweep's newest readable checkpoint (0 before any)."""
    from pipelines.lakehouse.checkpoints import CheckpointStore, StoredCheckpoint
    from pipelines.sweep.checkpoint import SweepCheckpoint

    for stored in CheckpointStore(str(root)).latest(sweep_id):
        if isinstance(stored, StoredCheckpoint):
            return SweepCheckpoint.from_arrays(stored.arrays).epoch
    return 0


@pytest.mark.timeout(2700)
def test_one_sweep_through_sigterms_a_sigkill_and_an_mlflow_outage_ends_equal_to_the_uninterrupted_sweep(
    server: MlflowServer, client: MlflowClient, demo_table: str, tmp_path: Path, reference: Reference,
) -> None:
    """One sweep id, each attempt the rerun of the one before: SIGTERM to the spark-submit JVM, then to the Python
    driver (each stops at an epoch boundary, exit 143, one line saying how to resume, runs KILLED); SIGKILL of the
    driver mid-epoch (only the epochs since the last checkpoint are lost); the MLflow server killed mid-sweep
    (training goes on, results are safe, exit 4); the server back, a rerun that trains nothing completes MLflow.
    Curves and rows end equal to the uninterrupted sweep's. (SIGINT takes the driver's same handler:
    tests/integration/test_sweep_tracking.py stops a sweep with each signal in-process.)"""
    sweep_id = "interrupted"
    settings = sweep_settings(demo_table, tmp_path, server.uri, sweep_id, {"tracking.retry_seconds": 20})
    printed_tracebacks: dict[str, list[str]] = {}

    def attempt(name: str, seconds: float | None) -> BackgroundJob:
        """The next attempt (not started), its epochs slowed by ``slowed(seconds)``."""
        return BackgroundJob("train_sweep.py", settings, job_log(tmp_path, name),
                             env=slowed(seconds) if seconds else None)

    def resumed_from(job: BackgroundJob) -> int:
        """The epoch the attempt says it resumed from (its opening line)."""
        return int(job.wait_for_line(rf"^sweep {sweep_id} \(resumed from epoch (\d+)\): ").group(1))

    # 1, 2. SIGTERM, to the JVM then to the driver, each once the attempt has trained an epoch
    stopped_at = 0
    for name, target in (("jvm-sigterm", "submit"), ("driver-sigterm", "driver")):
        with attempt(name, 0.5) as job:
            if stopped_at:
                assert resumed_from(job) == stopped_at
            job.wait_for_line(rf"^epoch {stopped_at + 1}/{EPOCHS}:")
            if target == "submit":
                job.signal_submit(signal.SIGTERM)
            else:
                job.signal_driver(signal.SIGTERM)
            code = job.wait(300)
        epoch = stopped_at_epoch(job, code, "SIGTERM", 143, sweep_id)
        assert stopped_at < epoch < EPOCHS, job.tail()
        assert epochs_printed(job) == list(range(stopped_at + 1, epoch + 1)), job.tail()
        runs = sweep_runs(client, sweep_id)
        assert set(runs.children) == CHILDREN
        assert set(runs.statuses().values()) == {"KILLED"}, f"after {name}: {runs.statuses()}"
        printed_tracebacks[name] = tracebacks(job)
        stopped_at = epoch

    # 3. SIGKILL of the driver once this attempt has written a checkpoint of its own
    with attempt("sigkill", 1.0) as job:
        assert resumed_from(job) == stopped_at
        saved = wait_for(lambda: max(checkpointed_epoch(tmp_path / "checkpoints", sweep_id) - stopped_at, 0), 300,
                         "a checkpoint past the resumed epoch") + stopped_at
        printed = max(epochs_printed(job))  # the checkpointed epoch, or the next one if this machine stalled
        job.signal_driver(signal.SIGKILL)
        code = job.wait(300)
    assert code != 0, job.tail()
    assert stopped_at < saved <= printed < EPOCHS - 1, f"checkpoint of epoch {saved}, killed after {printed}"

    # 4. the MLflow server killed while the next attempt trains
    job = attempt("outage", 0.5).start()
    try:
        resumed = resumed_from(job)
        assert saved <= resumed <= printed and printed - resumed < 2, \
            f"resumed from {resumed}, checkpoint of epoch {saved}, killed after {printed}"
        job.wait_for_line(rf"^epoch {resumed + 1}/{EPOCHS}:")
        server.kill()
        outage = time.monotonic()
        code = job.wait()
    finally:
        job.kill()
        if not server.healthy():
            server.start()  # same port, same store: the module's other tests go on with it
    assert code == 4, job.tail()
    assert job.seconds_to_exit(since=outage) < 180, f"{job.seconds_to_exit(since=outage):.0f} s after the outage"
    # only the epochs since the checkpoint were trained again, and training went on without MLflow
    assert epochs_printed(job) == list(range(resumed + 1, EPOCHS + 1)), job.tail()
    [error] = [line for line in job.lines() if line.startswith("error:")]
    assert "MLflow" in error and f"sweep.id={sweep_id}" in error, error
    printed_tracebacks["outage"] = tracebacks(job)
    assert_every_epoch_once(results(tmp_path / "results", sweep_id))

    # 5. the server is back (step 4 restarted it): a rerun trains nothing and completes MLflow
    with attempt("rerun", None) as rerun:
        code = rerun.wait()
    assert code == 0, rerun.tail()
    assert epochs_printed(rerun) == [], "the rerun trained"
    assert closing_line_epoch(rerun, sweep_id) == EPOCHS

    runs = sweep_runs(client, sweep_id)
    assert set(runs.children) == CHILDREN
    assert set(runs.statuses().values()) == {"FINISHED"}, runs.statuses()
    assert runs.parent.data.metrics["resumed_from_epoch"] == EPOCHS
    final = histories(client, runs)
    for name, curves in final.items():
        for metric, points in curves.items():
            assert [step for step, _ in points] == list(range(EPOCHS + 1)), f"{name} {metric}: {points}"
    assert final == reference.histories
    assert_results_equal_the_reference(tmp_path / "results", sweep_id, reference)
    # a stopped job prints one line, no traceback (checked last: everything above holds either way)
    printed_found = {name: found for name, found in printed_tracebacks.items() if found}
    assert not printed_found, f"tracebacks in the output of the stopped jobs: {printed_found}"


#: The writing stages a driver is killed in, in the order one sweep reaches them (see pipelines.faults).
WRITING_STAGES = ("checkpoint", "journal_create", "journal_append", "register", "merge")


@pytest.mark.timeout(2700)
def test_a_kill_in_every_writing_stage_then_a_rerun_each_time_ends_equal_to_the_uninterrupted_sweep(
    server: MlflowServer, client: MlflowClient, demo_table: str, tmp_path: Path, reference: Reference,
) -> None:
    """One sweep id, SIGKILLed in the middle of each stage that writes (a checkpoint file before its rename, the
    results table's first commit, an append, the model's registration, the final MERGE), each attempt by the
    rerun of the one before; the last rerun completes. Nothing a kill leaves blocks the next attempt, the registry
    holds one version, and rows and curves equal the uninterrupted sweep's."""
    sweep_id = "kills"
    model = "e2e_kills"
    settings = sweep_settings(demo_table, tmp_path, server.uri, sweep_id,
                              {"tracking.register_when": "always", "tracking.registered_model": model})
    markers = {stage: tmp_path / f"killed-in-{stage}" for stage in WRITING_STAGES}
    # each checkpoint waits for its journal append, so training never outruns the journal whatever this machine's
    # speed: the results table's first commit (killed in the second attempt, at its first checkpoint) and a later
    # append (the third, at its second checkpoint, or its first when the killed commit landed) happen while there are
    # epochs left to train
    env = {"LRSWEEP_INJECT_FAULT": ",".join(["journal_sync", *(
        f"driver_kill:stage={stage}:once={marker}" for stage, marker in markers.items())])}
    left: dict[str, str] = {}
    for stage in WRITING_STAGES:
        with BackgroundJob("train_sweep.py", settings, job_log(tmp_path, f"killed-in-{stage}"), env=env) as job:
            code = job.wait()
        fired = [name for name, marker in markers.items() if marker.exists()]
        assert fired == list(WRITING_STAGES[:WRITING_STAGES.index(stage) + 1]), f"{stage}: {fired}\n{job.tail()}"
        assert code != 0, f"not killed in {stage}:\n{job.tail()}"
        assert not job.matches(r"^results: "), job.tail()
        if stage == "journal_create":  # what the kill left: a half-created table, or (rarely) a committed one
            log = tmp_path / "results" / "_delta_log"
            left[stage] = "committed" if log.is_dir() and any(log.glob("*.json")) else "no commit"

    with BackgroundJob("train_sweep.py", settings, job_log(tmp_path, "kills-rerun"), env=env) as rerun:
        code = rerun.wait()
    assert code == 0, rerun.tail()
    assert not tracebacks(rerun), rerun.tail()

    runs = sweep_runs(client, sweep_id)
    assert set(runs.children) == CHILDREN
    assert set(runs.statuses().values()) == {"FINISHED"}, runs.statuses()
    assert histories(client, runs) == reference.histories
    versions = client.search_model_versions(f"name = '{model}'")
    assert [v.tags.get("lrsweep.sweep_id") for v in versions] == [sweep_id], "the registry was asked twice"
    rows = results(tmp_path / "results", sweep_id)
    assert_every_epoch_once(rows)
    pd.testing.assert_frame_equal(computed(rows).drop(columns=["registration"]),
                                  computed(reference.results).drop(columns=["registration"]), check_exact=True)
    best = rows[rows.is_best.astype(bool)]
    assert set(best.registration) == {f"registered:{versions[0].version}"}, left
    assert rows[~rows.is_best.astype(bool)].registration.isna().all()
    parent = runs.parent
    assert parent.data.params["table_version"] == "1" and parent.data.params["epochs"] == str(EPOCHS)
    assert 0 < parent.data.metrics["system/lrsweep_tracking_fraction"] < 1
    for run in runs.all:  # every run names the pinned Delta version it trained on
        assert run.inputs is not None, run.info.run_name
        [dataset] = run.inputs.dataset_inputs
        assert dataset.dataset.source_type == "delta_table"
        assert demo_table in dataset.dataset.source and '"delta_table_version": 1' in dataset.dataset.source

    # what the night left is usable: the champion loads from the server (its artifacts through the server's
    # proxy) and a batch scoring job with it writes predictions with their lineage
    assert_the_champion_loads_and_scores(server, demo_table, tmp_path, settings, model, versions[0].version, parent)


def assert_the_champion_loads_and_scores(server: MlflowServer, demo_table: str, workdir: Path,
                                        settings: Mapping[str, object], model: str, version: str,
                                        parent: Run) -> None:
    """``models:/<model>@champion`` from the server predicts raw rows read without Spark, and ``spark-submit
    jobs/score.py`` scores every row of the table with it (predictions read with delta-rs)."""
    import mlflow
    from deltalake import DeltaTable

    mlflow.set_tracking_uri(server.uri)  # restored after the module (tests/conftest.py)
    mlflow.set_registry_uri(server.uri)
    champion = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    features = champion.metadata.get_input_schema().input_names()
    raw = DeltaTable(demo_table).to_pandas(columns=features).dropna().head(20)
    example = raw.astype({column: "float64" for column in raw.select_dtypes("number").columns})
    probabilities = np.asarray(champion.predict(example))
    assert probabilities.shape == (20, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)

    with BackgroundJob("score.py", settings, job_log(workdir, "score")) as scoring:
        code = scoring.wait()
    assert code == 0, scoring.tail()
    assert scoring.matches(rf"with {re.escape(model)} version {version}\b"), scoring.tail()
    predictions = DeltaTable(str(workdir / "predictions")).to_pandas()
    assert len(predictions) == len(DeltaTable(demo_table).to_pandas(columns=["customer_id"]))
    assert predictions.prediction.dropna().between(0, 1).all()
    assert (predictions.model_name == model).all() and (predictions.model_version == version).all()
    assert (predictions.model_run_id == parent.info.run_id).all() and (predictions.source_version == 1).all()
