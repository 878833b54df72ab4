"""The tracking store's own logic, without a server: redaction, outage budgets, what counts as an outage,
a lost race in a SQL store (on a real sqlite store)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from pipelines.errors import TrackingError, TrackingUnavailableError
from pipelines.tracking.runs import log_dataset
from pipelines.tracking.store import Availability, is_unavailable, local_artifact_location, redact


def test_credentials_in_a_uri_are_redacted() -> None:
    assert redact("http://alice:s3cr3t@host:5000/x") == "http://***@host:5000/x"
    text = "error at https://bob:pw@mlflow.example/api: refused"
    assert redact(text) == "error at https://***@mlflow.example/api: refused"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_connection_failures_are_outages_and_refused_credentials_are_not() -> None:
    assert is_unavailable(ConnectionRefusedError(111, "Connection refused"))
    assert is_unavailable(MlflowException("API request to http://h/api failed with exception "
                                          "HTTPConnectionPool(...): Max retries exceeded"))
    assert not is_unavailable(MlflowException("You are not authenticated", error_code=databricks_pb2.UNAUTHENTICATED))
    assert not is_unavailable(MlflowException("bad param", error_code=databricks_pb2.INVALID_PARAMETER_VALUE))


def test_an_outage_is_retried_within_its_budget_then_reported() -> None:
    availability = Availability("http://u:p@h", retry_seconds=1.0)
    calls = []

    def down() -> None:
        calls.append(time.monotonic())
        raise ConnectionRefusedError(111, "Connection refused")

    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"http://\*\*\*@h is unavailable"):
        availability.call(down)
    assert 1.0 <= time.monotonic() - started < 3.0 and len(calls) >= 2 and availability.down
    with pytest.raises(TrackingUnavailableError):  # the budget is per outage: spent, it fails at once
        availability.call(down, wait=True)
    assert len(calls) <= 4
    assert availability.call(lambda: "back") == "back" and not availability.down  # a success ends the outage
    with pytest.raises(TrackingUnavailableError):
        availability.call(down, wait=False)  # the live view never waits


def test_refused_credentials_are_a_user_error() -> None:
    def refuse() -> None:
        raise MlflowException("You are not authenticated", error_code=databricks_pb2.UNAUTHENTICATED)

    with pytest.raises(TrackingError, match=r"refused the credentials.*MLFLOW_TRACKING_USERNAME"):
        Availability("http://h", 10.0).call(refuse)


def test_local_stores_keep_artifacts_next_to_the_store(tmp_path: object) -> None:
    assert local_artifact_location("sqlite:////data/x/mlflow.db", "my exp") == "file:///data/x/mlartifacts/my_exp"
    assert local_artifact_location("http://host:5000", "e") is None


def test_runs_logging_the_same_new_dataset_at_once_all_get_it(tmp_path: Path) -> None:
    # MLflow's SQL store checks for the dataset, then inserts it: runs racing on a new dataset collide on its
    # unique key (about half of them on this store without the retry); every run must still be linked to it
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("race")
    for version in range(4):
        dataset = DatasetInput(Dataset(name=f"features@v{version}", digest=f"d{version}", source_type="delta_table",
                                       source=json.dumps({"path": "/lake/features", "delta_table_version": version})))
        runs = [client.create_run(experiment).info.run_id for _ in range(6)]
        together = threading.Barrier(len(runs))
        failures: list[BaseException] = []

        def link(run_id: str, dataset: DatasetInput = dataset, together: threading.Barrier = together,
                 failures: list[BaseException] = failures) -> None:
            together.wait()
            try:
                log_dataset(client, run_id, dataset)
            except Exception as error:
                failures.append(error)

        threads = [threading.Thread(target=link, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures[0]
        for run_id in runs:
            assert [i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs] == [f"features@v{version}"]
