"""The tracking store's own logic, without an MLflow server: redaction, outage budgets, what counts as an
outage, a lost race in a SQL store (on a real sqlite store).

What counts as an outage is tested on the errors real libraries raise (http.client, requests, MLflow's REST
client) when a tiny HTTP server on the loopback cuts its answer mid-body, hangs up, never answers or answers
5xx: the shapes a killed or overloaded ``mlflow server`` produces.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from pipelines.errors import TrackingError, TrackingUnavailableError
from pipelines.tracking.export import resolve_scoring_model
from pipelines.tracking.runs import log_dataset
from pipelines.tracking.store import Availability, is_unavailable, local_artifact_location, redact

Answer = Callable[[socket.socket], None]
BODY = b'{"experiment": {}}'


@contextlib.contextmanager
def http_server(answer: Answer) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` served by ``answer(connection)`` after the request's head is read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                received = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
                        received += chunk
                    answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def cut_mid_body(connection: socket.socket) -> None:
    """Headers promising 100 bytes, 10 of them, then the connection closes (a server killed mid-answer)."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                       + BODY[:10])


def cut_mid_chunk(connection: socket.socket) -> None:
    """A chunked answer whose second chunk never comes."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\n{\"exp\r\n40\r\n\"erim")


def hang_up(connection: socket.socket) -> None:
    """Close without a byte of answer (the request reached a dying server)."""


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed process's socket may."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def never_answer(connection: socket.socket) -> None:
    time.sleep(3)


def status(code: int, body: bytes = b"<html>unavailable</html>", kind: str = "text/html") -> Answer:
    def answer(connection: socket.socket) -> None:
        connection.sendall(f"HTTP/1.1 {code} X\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode() + body)
    return answer


def mlflow_error(code: int, error_code: str) -> Answer:
    return status(code, json.dumps({"error_code": error_code, "message": "from the server"}).encode(),
                  "application/json")


def raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as error:
        return error
    raise AssertionError("nothing was raised")


def with_http_client(url: str) -> BaseException:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=1)

    def get() -> bytes:
        connection.request("GET", "/api/2.0/mlflow/experiments/get?experiment_id=0")
        return connection.getresponse().read()

    return raised(get)


def with_requests(url: str) -> BaseException:
    def get() -> None:
        requests.get(f"{url}/api/2.0/mlflow/experiments/get", timeout=1).raise_for_status()

    return raised(get)


def with_mlflow(url: str) -> BaseException:
    return raised(lambda: MlflowClient(tracking_uri=url).get_experiment("0"))


@pytest.fixture
def fail_fast_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's REST client as ``connect`` sets it: no retries of its own, a short timeout."""
    for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}.items():
        monkeypatch.setenv(key, value)


def test_credentials_in_a_uri_are_redacted() -> None:
    assert redact("http://alice:s3cr3t@host:5000/x") == "http://***@host:5000/x"
    text = "error at https://bob:pw@mlflow.example/api: refused"
    assert redact(text) == "error at https://***@mlflow.example/api: refused"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


CLIENTS = {"http.client": with_http_client, "requests": with_requests, "mlflow": with_mlflow}
OUTAGES = {"cut mid-body": cut_mid_body, "cut mid-chunk": cut_mid_chunk, "hang-up": hang_up, "reset": reset,
           "no answer": never_answer, "503 page": status(503), "502 page": status(502),
           "500 from MLflow": mlflow_error(500, "INTERNAL_ERROR"),
           "503 from MLflow": mlflow_error(503, "TEMPORARILY_UNAVAILABLE"), "429": status(429)}


CUT_SHORT = ("cut mid-body", "cut mid-chunk", "hang-up", "reset", "no answer")


@pytest.mark.usefixtures("fail_fast_mlflow")
@pytest.mark.parametrize(("failure", "client"), [
    (failure, client) for failure in OUTAGES for client in CLIENTS
    # http.client hands any complete answer back: a status is its caller's to judge
    if client != "http.client" or failure in CUT_SHORT])
def test_every_transport_failure_and_5xx_is_an_outage(failure: str, client: str) -> None:
    with http_server(OUTAGES[failure]) as url:
        error = CLIENTS[client](url)
    assert is_unavailable(error), f"{type(error).__name__}: {error}"


@pytest.mark.usefixtures("fail_fast_mlflow")
def test_the_errors_a_cut_answer_raises_are_the_ones_the_classifier_names() -> None:
    # the shapes issue 21 saw: an IncompleteRead inside urllib3's ProtocolError inside requests'
    # ChunkedEncodingError, and MLflow's "API request ... failed with exception" around it (as __context__)
    with http_server(cut_mid_body) as url:
        plain, library, wrapped = with_http_client(url), with_requests(url), with_mlflow(url)
    assert isinstance(plain, http.client.IncompleteRead)
    assert isinstance(library, requests.exceptions.ChunkedEncodingError) and "IncompleteRead" in str(library)
    assert isinstance(wrapped, MlflowException) and "failed with exception" in str(wrapped)
    assert isinstance(wrapped.__context__, requests.exceptions.ChunkedEncodingError)
    with http_server(hang_up) as url:
        assert isinstance(with_http_client(url), http.client.RemoteDisconnected)


@pytest.mark.usefixtures("fail_fast_mlflow")
def test_a_refused_connection_is_an_outage_for_every_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for client in CLIENTS.values():
        error = client(url)
        assert is_unavailable(error), f"{type(error).__name__}: {error}"


@pytest.mark.usefixtures("fail_fast_mlflow")
@pytest.mark.parametrize("answer", [mlflow_error(404, "RESOURCE_DOES_NOT_EXIST"),
                                    mlflow_error(400, "INVALID_PARAMETER_VALUE"), status(404), status(400)],
                         ids=["404 from MLflow", "400 from MLflow", "404 page", "400 page"])
def test_answers_that_say_the_request_is_wrong_are_not_outages(answer: Answer) -> None:
    with http_server(answer) as url:
        for client in (with_requests, with_mlflow):
            error = client(url)
            assert not is_unavailable(error), f"{type(error).__name__}: {error}"


def test_bugs_stay_bugs_even_when_raised_while_an_outage_was_handled() -> None:
    def bug_in_a_handler() -> None:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            len(None)  # type: ignore[arg-type]

    bug = raised(bug_in_a_handler)
    assert isinstance(bug, TypeError) and isinstance(bug.__context__, ConnectionResetError)
    assert not is_unavailable(bug)
    assert not is_unavailable(KeyError("lrsweep.point"))
    # a run id holding "503" is not a 503 (the old text markers said it was)
    missing = MlflowException("Run 'a5031f' not found", error_code=databricks_pb2.RESOURCE_DOES_NOT_EXIST)
    assert not is_unavailable(missing)
    assert not is_unavailable(requests.exceptions.InvalidURL("http://"))


@pytest.mark.usefixtures("fail_fast_mlflow")
def test_an_outage_wrapped_by_lrsweep_or_mlflow_is_still_an_outage() -> None:
    with http_server(cut_mid_body) as url:
        cut = with_mlflow(url)
    try:
        raise TrackingError("model registry: cannot read m@champion") from cut
    except TrackingError as error:
        assert is_unavailable(error)
    try:
        raise TrackingError("refused") from None
    except TrackingError as error:
        assert not is_unavailable(error)
    assert is_unavailable(TrackingUnavailableError("MLflow tracking store http://h is unavailable (x)"))
    # MLflow flattens an artifact transfer's failures to text
    assert is_unavailable(MlflowException("The following failures occurred while downloading one or more artifacts "
                                          "from http://h: ##### File model.pkl ##### ('Connection broken: "
                                          "IncompleteRead(10 bytes read, 90 more expected)', IncompleteRead(...))"))
    # a locked local sqlite store, as MLflow's SQL store reports it
    assert is_unavailable(MlflowException("database is locked", error_code=databricks_pb2.TEMPORARILY_UNAVAILABLE))


@pytest.mark.usefixtures("fail_fast_mlflow")
def test_a_cut_answer_in_a_store_call_is_retried_then_reported_as_an_outage() -> None:
    with http_server(cut_mid_body) as url:
        client = MlflowClient(tracking_uri=url)
        with pytest.raises(TrackingUnavailableError, match=r"is unavailable \(API request .* failed with exception"):
            Availability(url, retry_seconds=0.5).call(lambda: client.get_experiment("0"))
        with pytest.raises(TypeError):  # a bug in the action is not retried, not renamed
            Availability(url, retry_seconds=5).call(lambda: client.get_experiment(len(None)))  # type: ignore[arg-type]


@pytest.mark.usefixtures("fail_fast_mlflow")
def test_a_scoring_model_that_cannot_be_fetched_is_an_outage_not_a_bad_uri() -> None:
    cut, missing = http_server(cut_mid_body), http_server(mlflow_error(404, "RESOURCE_DOES_NOT_EXIST"))
    with cut as url, pytest.raises(TrackingUnavailableError, match="IncompleteRead"):
        resolve_scoring_model(MlflowClient(tracking_uri=url, registry_uri=url), "models:/churn@champion")
    with missing as url, pytest.raises(TrackingError, match=r"scoring.model_uri models:/churn@champion"):
        resolve_scoring_model(MlflowClient(tracking_uri=url, registry_uri=url), "models:/churn@champion")


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
