"""One sweep id, one live job (issue 21, row 1), in-process on real Delta tables and a real sqlite MLflow store.

Two sweeps of one id started together: one trains, the other is refused before it creates any MLflow run (one
parent, one model version). A job holding the lease turns a second job away with exit 2 and one line naming it.
A job whose lease was taken over stops at its next epoch boundary and writes nothing more. The registry asked
twice for one sweep's model (an attempt stopped between the registry's answer and the parent's tag) keeps one
version.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from jobs import sync_sweep, train_sweep
from pipelines.cli import run_job
from pipelines.config import Config, TrackingConfig
from pipelines.errors import LeaseLostError, SweepLockedError
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.lakehouse.lease import LeaseStore
from pipelines.orchestration.sweep import SweepReport, run_tracked_sweep
from pipelines.tracking.export import linear_pipeline, log_model
from pipelines.tracking.registry import CHAMPION, TAG_REGISTRATION, register_model
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID, SweepTracker
from pipelines.tracking.store import connect
from tests.conftest import make_config, table_overrides

EXPERIMENT = "it-lease"
MODEL = "lease_model"


def _config(table: str, workdir: Path, sweep_id: str, *overrides: str) -> Config:
    return make_config(table, workdir, [
        "data.label=label", "data.exclude=[]", "train.epochs=2", "train.checkpoint_every=1",
        "train.num_partitions=2", "train.batch_size=64", "sweep.learning_rates=[0.01, 0.1]",
        f"sweep.id={sweep_id}", f"tracking.experiment={EXPERIMENT}", f"tracking.registered_model={MODEL}",
        *overrides])


def _parents(client: MlflowClient, sweep_id: str) -> list[str]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' AND tags.`{TAG_ROLE}` = 'parent'")
    return [run.info.status for run in runs]


@pytest.mark.parametrize("job", [train_sweep, sync_sweep], ids=["sweep", "sync"])
def test_a_job_refused_by_a_live_lease_exits_2_with_one_line_before_any_run(
        spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], job: ModuleType) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "held")
    holder = LeaseStore(config.output.checkpoints).acquire("held", ttl=300, renew=False)
    capsys.readouterr()  # what setting up printed (the suite's first empty MLflow store logs its migrations)
    argv = [*table_overrides(synthetic_tables["logistic"], tmp_path), "--set", "data.label=label",
            "--set", "sweep.id=held", "--set", f"tracking.experiment={EXPERIMENT}"]
    assert run_job(job.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: sweep.id 'held' is held by another job: {socket.gethostname()}/{os.getpid()} "
                             "started ")
    # the seconds left depend on how long the job took to start (minutes on a loaded machine): any number
    expiry = r"lease renewed \d+ s ago, expires 20\d\d-\d\d-\d\dT[\d:]+Z \(in \d+ s\) unless renewed"
    assert re.search(expiry, err[0]), err[0]
    assert _parents(MlflowClient(tracking_uri=config.tracking.uri), "held") == []  # no parent run was created
    assert not list((tmp_path / "checkpoints" / "held").glob("checkpoint-*"))
    holder.release()


def test_a_job_whose_lease_was_taken_over_stops_at_the_next_boundary_and_writes_nothing_more(
        spark: SparkSession, synthetic_tables: dict[str, str], tmp_path: Path) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "overtaken")
    folder = tmp_path / "checkpoints" / "overtaken"
    seen: dict[str, list[str]] = {}

    def progress(line: str) -> None:
        if line.startswith("epoch 1/"):  # another job takes the lease over (this one was paused past its ttl)
            mine = json.loads((folder / "lease-00000001.json").read_text())
            mine.update(host="other-host", pid=99, token="a" * 32, renewed=mine["renewed"] + 3600)
            (folder / "lease-00000002.json").write_text(json.dumps(mine))  # long before the renewer's next round
            seen["after epoch 1"] = sorted(p.name for p in folder.glob("checkpoint-*"))

    with pytest.raises(LeaseLostError, match=r"lost its lease \(taken over by other-host/99 started "):
        run_tracked_sweep(spark, config, progress=progress)
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-00000001.npz"]  # epoch 1's only
    assert seen["after epoch 1"] == []  # the progress line comes before that boundary's checkpoint
    current = LeaseStore(config.output.checkpoints).current("overtaken")
    assert current is not None and current.host == "other-host" and not current.released  # left to its holder
    assert _parents(MlflowClient(tracking_uri=config.tracking.uri), "overtaken") == ["RUNNING"]  # not ended by us


def test_two_sweeps_of_one_id_started_together_train_once(spark: SparkSession, synthetic_tables: dict[str, str],
                                                           tmp_path: Path) -> None:
    config = _config(synthetic_tables["logistic"], tmp_path, "twins", "tracking.register_when=never")
    barrier = threading.Barrier(2)
    reports: list[SweepReport] = []
    refused: list[str] = []

    def sweep() -> None:
        barrier.wait()
        try:
            reports.append(run_tracked_sweep(spark, config, progress=None))
        except SweepLockedError as error:
            refused.append(str(error))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(reports) == 1 and len(refused) == 1, refused
    assert refused[0].startswith(f"sweep.id 'twins' is held by another job: {socket.gethostname()}/{os.getpid()} "
                                 "started ")
    client = MlflowClient(tracking_uri=config.tracking.uri)
    assert _parents(client, "twins") == ["FINISHED"]
    for run_id in reports[0].child_run_ids:  # every point once
        assert run_id is not None
        steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
        assert sorted(steps) == sorted(set(steps))
    lease = LeaseStore(config.output.checkpoints).current("twins")
    assert lease is not None and lease.released  # released at the end: a rerun takes it without waiting


def test_the_registry_is_asked_once_per_sweep(tmp_path: Path) -> None:
    store = connect(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="registry-once"))
    encoding = TableEncoding([ColumnEncoding("a", "number", 1, means=(0.0,), scales=(1.0,))])
    example = pd.DataFrame({"a": [0.5, -1.0]})

    def sweep(sweep_id: str) -> tuple[SweepTracker, str]:
        tracker = SweepTracker(store, sweep_id)
        tracker.start_parent({}, {})
        pipeline = linear_pipeline(encoding, np.array([1.0]), 0.0, "logistic")
        return tracker, log_model(tracker, pipeline, example, "logistic", {"sweep_id": sweep_id})

    def register(tracker: SweepTracker, model_uri: str) -> str | None:
        return register_model(tracker, model_uri, MODEL, "always", 0.5, "logistic",
                              {TAG_SWEEP_ID: tracker.sweep_id}).version

    first, first_uri = sweep("first")
    assert register(first, first_uri) == "1"
    # killed between the registry's answer and the parent's tag: the rerun finds the version, registers nothing
    store.client.delete_tag(first.parent_run_id, TAG_REGISTRATION)
    again = register_model(first, first_uri, MODEL, "always", 0.5, "logistic", {})
    assert (again.decision, again.version) == ("registered", "1")
    assert again.reason == f"version 1 was registered by an earlier attempt of this sweep; alias '{CHAMPION}' set"
    assert store.client.get_run(first.parent_run_id).data.tags[TAG_REGISTRATION] == "registered:1"
    # a later sweep's champion is not displaced by an earlier sweep completing its registration
    second, second_uri = sweep("second")
    assert register(second, second_uri) == "2"
    store.client.delete_tag(first.parent_run_id, TAG_REGISTRATION)
    late = register_model(first, first_uri, MODEL, "always", 0.5, "logistic", {})
    assert late.version == "1" and late.reason.endswith("alias 'champion' stays on a later version")
    assert str(store.client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"
    versions = store.client.search_model_versions(f"name = '{MODEL}'")
    assert sorted((str(v.version), v.tags[TAG_SWEEP_ID]) for v in versions) == [("1", "first"), ("2", "second")]
