"""Where runs go: the tracking URI, the experiment, a client that fails fast, and outages of the store.

MLflow's own HTTP client retries a refused connection for about four minutes before it gives up. A sweep
must not wait that long, neither at start (a wrong URI is reported within ``tracking.connect_timeout_seconds``,
before the table is read) nor while training (the live view must never hold training up). So the process's
MLflow requests are made to fail fast (no client retries, a short timeout) and :class:`Availability` owns
the retrying instead: calls are retried for at most ``tracking.retry_seconds`` per outage, then the caller
goes on without MLflow and what is missing is replayed later.

Credentials come from MLflow's environment variables (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, or a
token); a URI that carries ``user:password@`` still works but is never printed or logged: see :func:`redact`.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import requests
import urllib3
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from pipelines import __version__
from pipelines.config import TrackingConfig, resolve_tracking_uri
from pipelines.errors import LrsweepError, TrackingError, TrackingUnavailableError, first_line
from pipelines.stopwatch import Stopwatch

Value = TypeVar("Value")

#: MLflow's client-side retries off (``Availability`` retries), and a bound on each request.
REQUEST_TIMEOUT_SECONDS = 20
_CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                    # MLflow prints a "View run ... at <uri>" line per ended run: noise in a job's output
                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: Transport failures: the request or its answer did not get through (refused, reset, cut mid-body, timed out).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # sockets (refused, reset, broken pipe, timeouts, name resolution) and a local store's files
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine: an answer cut short
    urllib3.exceptions.ProtocolError,  # "Connection broken: IncompleteRead(...)", "Connection aborted."
    urllib3.exceptions.TimeoutError,  # connect and read timeouts (NewConnectionError too)
    urllib3.exceptions.MaxRetryError,
    urllib3.exceptions.ResponseError,  # "too many 503 error responses"
    urllib3.exceptions.DecodeError,  # a compressed body cut short
)
#: requests' errors about the request itself (a bad URL or header): the caller's mistake, never an outage.
_REQUEST_MISTAKES = (requests.exceptions.URLRequired, requests.exceptions.MissingSchema,
                     requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                     requests.exceptions.InvalidHeader, requests.exceptions.InvalidJSONError)
#: HTTP answers that mean "not now": 408 (request timeout), 429 (too many requests) and every 5xx.
_RETRYABLE_STATUSES = (408, 429)
_UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED")
#: MLflow words a non-JSON error answer "API request to endpoint X failed with error code 503 != 200".
_STATUS_IN_MESSAGE = re.compile(r"failed with error code (\d{3})")
#: Where MLflow flattens a failure to text (an artifact transfer's per-file failures, some store errors),
#: what the text of a transport failure or a busy local store says.
_UNAVAILABLE_MARKERS = ("Connection broken", "IncompleteRead", "RemoteDisconnected", "ChunkedEncodingError",
                        "ProtocolError", "Connection refused", "Connection reset", "Connection aborted",
                        "Max retries exceeded", "Read timed out", "ConnectTimeout", "database is locked",
                        "unable to open database")
_AUTH_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def tracking_uri(config: TrackingConfig) -> str:
    """The store's URI (resolved when the configuration was loaded: see ``config.resolve_tracking_uri``)."""
    return resolve_tracking_uri(config.uri)


def redact(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL replaced by ``***@`` (safe to print, tag or log)."""
    return re.sub(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@", r"\g<scheme>***@", text)


def credentials_to_environment(uri: str) -> str:
    """``uri`` without its ``user:password@``, which move to ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``.

    MLflow accepts credentials in the URI but prints and logs the URI in places; taken out, they exist only
    where MLflow's own environment variables put them (URI credentials win, as they do in MLflow).
    """
    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def code_version() -> str:
    """The git commit of the code (``+dirty`` with local changes) when it runs from a checkout, else the
    package version (an installed wheel, a zip shipped to a cluster)."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{commit}+dirty" if dirty else commit or __version__


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` means the store cannot serve right now, not that the request or our code is wrong.

    The one classifier of outages, for every thread and call site: a transport failure (connection refused
    or reset, an answer cut mid-body, a timeout), an HTTP 408, 429 or 5xx answer, a busy local store. It
    looks through the wrappers MLflow and lrsweep put around such a failure (an ``MlflowException`` or a
    :class:`~pipelines.errors.TrackingError` caused by it); any other error, a ``TypeError`` raised while one
    was handled included, is not an outage. Refused credentials never are (see :func:`credentials_refused`).
    """
    links = list(_wrapped(error))
    if any(credentials_refused(link) for link in links):
        return False
    return any(_outage(link) for link in links)


def _wrapped(error: BaseException) -> Iterator[BaseException]:
    """``error`` and, when it is a wrapper (MLflow's or lrsweep's), the errors it wraps.

    MLflow's REST client raises its ``MlflowException`` inside the ``except`` that caught the transport
    error, without ``from``: the cause is in ``__context__``.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        if not isinstance(link, MlflowException | LrsweepError):
            return
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def _outage(error: BaseException) -> bool:
    if isinstance(error, TrackingUnavailableError):
        return True
    if isinstance(error, requests.exceptions.HTTPError):  # an answer: an outage only when it says "not now"
        status = error.response.status_code if error.response is not None else None
        return status is not None and (status >= 500 or status in _RETRYABLE_STATUSES)
    if isinstance(error, _REQUEST_MISTAKES):
        return False
    if isinstance(error, _TRANSPORT_ERRORS):
        return True
    if not isinstance(error, MlflowException):
        return False
    if error.error_code in _UNAVAILABLE_CODES:  # a server's 503/504/429, a locked sqlite store
        return True
    if isinstance(error, RestException) and error.get_http_status_code() >= 500:  # the server answered 5xx
        return True
    answered = _STATUS_IN_MESSAGE.search(str(error))
    if answered is not None:
        code = int(answered.group(1))
        return code >= 500 or code in _RETRYABLE_STATUSES
    return any(marker in str(error) for marker in _UNAVAILABLE_MARKERS)


def unavailable(uri: str, error: BaseException) -> TrackingUnavailableError:
    """The outage ``error`` (see :func:`is_unavailable`) as the error a job reports (exit 4), in one line."""
    if isinstance(error, TrackingUnavailableError):
        return error
    return TrackingUnavailableError(f"MLflow tracking store {redact(uri)} is unavailable ({_first_line(error)})")


def credentials_refused(error: BaseException) -> bool:
    return isinstance(error, MlflowException) and error.error_code in _AUTH_CODES


@dataclass
class Availability:
    """Outages of one tracking store, shared by every thread that talks to it.

    :meth:`call` runs an MLflow call; when the store is unreachable the call is retried until the outage
    has lasted ``retry_seconds`` (``wait=True``), or fails at once (``wait=False``, the live view's way).
    Either way :class:`~pipelines.errors.TrackingUnavailableError` tells the caller to go on without MLflow.
    """

    uri: str
    retry_seconds: float
    outage_started: float | None = None
    outages: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def down(self) -> bool:
        return self.outage_started is not None

    def call(self, action: Callable[[], Value], *, wait: bool = True) -> Value:
        """``action()``, retried within the outage budget; raises TrackingUnavailableError or TrackingError."""
        while True:
            try:
                result = action()
            except Exception as error:
                if credentials_refused(error):
                    raise TrackingError(f"MLflow tracking store {redact(self.uri)} refused the credentials "
                                        f"({_first_line(error)}); set MLFLOW_TRACKING_USERNAME and "
                                        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)") from None
                if not is_unavailable(error):
                    raise
                remaining = self._note_failure()
                if not wait or remaining <= 0:
                    raise unavailable(self.uri, error) from None
                time.sleep(min(2.0, remaining))
                continue
            self._note_success()
            return result

    def _note_failure(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self.outage_started is None:
                self.outage_started = now
                self.outages += 1
            return self.retry_seconds - (now - self.outage_started)

    def _note_success(self) -> None:
        with self._lock:
            self.outage_started = None


@dataclass
class TrackingStore:
    """A connected store: the client, the experiment, its outages and the time spent in MLflow calls."""

    client: MlflowClient
    experiment_id: str
    uri: str
    availability: Availability
    stopwatch: Stopwatch = field(default_factory=Stopwatch)

    @property
    def display_uri(self) -> str:
        return redact(self.uri)

    def call(self, label: str, action: Callable[[], Value], *, wait: bool = True) -> Value:
        """``action()`` timed under ``label`` and retried within the outage budget (see :class:`Availability`)."""
        with self.stopwatch.timed(label):
            return self.availability.call(action, wait=wait)


def connect(config: TrackingConfig) -> TrackingStore:
    """Point MLflow (tracking and registry) at the configured store; reach it and the experiment quickly.

    The experiment is created when missing; for a local store (sqlite, a folder) its artifacts go next to
    the store (``<store folder>/mlartifacts``), not under the working directory. Creating a new sqlite store
    is serialized between processes (a file lock), so two sweeps starting at once on a new store both work.

    Raises
    ------
    TrackingUnavailableError
        The store does not answer within ``tracking.connect_timeout_seconds`` (exit 4: rerun later).
    TrackingError
        It refuses the credentials, or the experiment is deleted.
    """
    uri = credentials_to_environment(tracking_uri(config))
    for key, value in _CLIENT_SETTINGS.items():
        os.environ[key] = value
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # half the connect budget per request, half for retrying a refused connection (a server starting up)
    availability = Availability(uri, config.connect_timeout_seconds / 2)
    stopwatch = Stopwatch()
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(config.connect_timeout_seconds / 2)))
    try:
        with stopwatch.timed("connect"), _store_creation_lock(uri):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # a new sqlite store migrates here
            experiment = availability.call(lambda: client.get_experiment_by_name(config.experiment))
            if experiment is None:
                location = local_artifact_location(uri, config.experiment)
                experiment_id = availability.call(lambda: _create_experiment(client, config.experiment, location))
            elif experiment.lifecycle_stage != "active":
                raise TrackingError(f"MLflow experiment {config.experiment!r} is deleted in {redact(uri)}; restore it "
                                    "or set tracking.experiment to another name")
            else:
                experiment_id = experiment.experiment_id
    except TrackingUnavailableError as error:
        raise TrackingUnavailableError(f"{error}; nothing was started: rerun when it is reachable") from None
    except MlflowException as error:
        raise TrackingError(f"MLflow tracking store {redact(uri)}: {redact(error.message)}") from None
    finally:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT_SECONDS)
    return TrackingStore(client, experiment_id, uri, Availability(uri, config.retry_seconds), stopwatch)


def _create_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as error:  # another sweep created it a moment ago
        if error.error_code == "RESOURCE_ALREADY_EXISTS":
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return str(experiment.experiment_id)
        raise


def local_artifact_location(uri: str, experiment: str) -> str | None:
    """``<store folder>/mlartifacts/<experiment>`` for sqlite and file stores; None for servers."""
    folder = local_store_folder(uri)
    if folder is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (folder / "mlartifacts" / safe).as_uri()


def local_store_folder(uri: str) -> Path | None:
    """The folder of a local store (the sqlite file's folder, or a ``file:`` store itself)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(parts.path).resolve()
    if parts.scheme == "" and uri:
        return Path(uri).resolve()
    return None


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` around the first use of a sqlite store (its migrations)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///")).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_line(error: BaseException) -> str:
    return redact(first_line(error))
