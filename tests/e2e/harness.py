"""Real processes for end-to-end tests: an ``mlflow server`` and ``spark-submit`` jobs in the background.

:class:`MlflowServer` runs ``mlflow server`` (sqlite store, artifacts folder, optionally MLflow's basic-auth
app) on a free port; it can be killed with SIGKILL and started again on the same port and store.
:class:`BackgroundJob` runs ``spark-submit jobs/<job> --set key=value ...`` with its output (spark-submit
merges the Python driver's stderr into it) streamed to a file, so a test can wait for a line, find the
Python driver process and signal it or the spark-submit JVM, and wait for the exit code.

Both start their processes in a new session (process group) and, when stopped, kill only that group:
``mlflow server`` serves from a uvicorn child that a signal to the parent alone would leave running.
Every wait polls a condition with a deadline; none relies on a fixed sleep.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from pipelines import PROJECT_ROOT
from tests.conftest import SHORT_JVM_OPTS, empty_store

BIN = Path(sys.executable).parent
POLL_SECONDS = 0.1
#: spark-submit's report of resolving Delta's package (tab-indented or ``::`` lines and a few headers).
_RESOLUTION_REPORT = re.compile(r"^(\t|::|Ivy Default Cache|The jars for the packages|\S+#\S+ added as a dependency)")

Value = TypeVar("Value")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], Value | None], timeout: float, what: str,
             interval: float = POLL_SECONDS) -> Value:
    """Poll ``condition()`` until it returns a truthy value (returned); ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``process`` leads (it was started with a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


# ------------------------------------------------------------------------------------------------ MLflow


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite store and an artifacts folder under ``root``.

    With ``admin_password`` it runs MLflow's ``basic-auth`` app (users in ``root/basic_auth.db``, admin user
    ``admin``, everyone else READ by default). :meth:`kill` is a SIGKILL of the server's process group;
    :meth:`start` after it serves the same store on the same port.
    """

    ADMIN = "admin"

    def __init__(self, root: Path, admin_password: str | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_password = admin_password
        self.store_uri = empty_store(root)  # a copy of the suite's migrated empty store: no migrations at start
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri_with_credentials(self) -> str:
        """``http://admin:<password>@127.0.0.1:<port>`` (basic-auth servers)."""
        assert self.admin_password is not None, "not a basic-auth server"
        return f"http://{self.ADMIN}:{self.admin_password}@127.0.0.1:{self.port}"

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING_")}
        # MLflow's job execution (a job runner and seven Huey consumer processes per server, for its GenAI jobs)
        # serves nothing lrsweep does and took ~3 CPU-seconds per server and minute of the suite's two cores
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.admin_password is not None:
            config = self.root / "basic_auth.ini"
            config.write_text("\n".join([
                "[mlflow]", "default_permission = READ", f"database_uri = sqlite:///{self.root / 'basic_auth.db'}",
                f"admin_username = {self.ADMIN}",
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                "auth_cache_ttl_seconds = 60", ""]))
            env.update({"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": "e2e-tests-secret-key"})
        return env

    def start(self, timeout: float = 180) -> MlflowServer:
        """Start the server (again: same port, same store) and wait until ``/health`` answers."""
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", self.store_uri, "--artifacts-destination", str(self.root / "artifacts"),
                   "--workers", "1"]
        if self.admin_password is not None:
            command += ["--app-name", "basic-auth"]
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self._environment(), start_new_session=True)
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 180) -> None:
        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}): {self.log_tail()}")
            return self.healthy()

        started = time.monotonic()
        wait_for(up, timeout, f"mlflow server on port {self.port}", interval=0.5)
        # /health answers before the tracking store is opened, which the first API request does (the store's schema
        # check, the handlers' imports: over 10 s beside other Spark jobs, longer than a job's connect timeout)
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1")
        if self.admin_password is not None:
            token = base64.b64encode(f"{self.ADMIN}:{self.admin_password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=max(30.0, timeout - (time.monotonic() - started))) as answer:
            assert answer.status == 200, f"mlflow server on port {self.port} answered {answer.status}"

    def kill(self) -> None:
        """SIGKILL the server and its workers (an outage); wait until the port refuses connections."""
        assert self.process is not None
        _kill_group(self.process)
        self.process.wait(timeout=60)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_for(refused, 60, f"port {self.port} to be closed")
        self._close_log()

    def stop(self) -> None:
        """Terminate the server (SIGTERM to its group, SIGKILL after 20 s)."""
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                _kill_group(self.process)  # workers the parent may have left behind
            self._close_log()
            return
        _kill_group(self.process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        _kill_group(self.process)
        self._close_log()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------- spark-submit


def set_args(settings: Mapping[str, object]) -> list[str]:
    """``--set key=value`` arguments for ``settings``."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def submit_command(job: str, settings: Mapping[str, object]) -> list[str]:
    """``spark-submit`` of ``jobs/<job>`` from this virtualenv on ``local[2]``, as the Makefile runs it."""
    from pipelines.session import spark_submit_args

    return [str(BIN / "spark-submit"), "--master", "local[2]", *spark_submit_args(),
            "--conf", "spark.ui.enabled=false", "--conf", "spark.ui.showConsoleProgress=false",
            str(PROJECT_ROOT / "jobs" / job), *set_args(settings)]


def process_age_seconds(pid: int) -> float:
    """How long ago process ``pid`` started (from ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        now = float(uptime.read().split()[0])
    return now - start_ticks / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (from ``/proc``)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            children.append(int(entry))
    return children


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return []


class BackgroundJob:
    """``spark-submit jobs/<job> --set ...`` in the background, its output streamed to ``log``.

    ``spark-submit`` execs the JVM, so :attr:`pid` is the JVM's; the Python driver (``jobs/<job>``) is its
    child (:meth:`driver_pid`). Use it as a context manager: a job still running at the end is killed.
    """

    def __init__(self, job: str, settings: Mapping[str, object], log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.job = job
        self.command = submit_command(job, settings)
        self.log_path = log
        self.env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                    **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() at start
        self.ended_at: float | None = None  # time.monotonic() when the exit was seen
        self.driver_started_at: float | None = None  # time.monotonic() of the driver's start, once found
        self._driver: int | None = None

    def start(self) -> BackgroundJob:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=PROJECT_ROOT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    # ---------------------------------------------------------------------------------------- output

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self) -> list[str]:
        """The output's lines (Spark's progress bar separates with carriage returns too)."""
        return [line for line in re.split(r"[\r\n]+", self.output) if line]

    def matches(self, pattern: str) -> list[re.Match[str]]:
        """Every output line that ``pattern`` matches (``re.search``)."""
        compiled = re.compile(pattern)
        return [match for line in self.lines() if (match := compiled.search(line))]

    def tail(self, lines: int = 60) -> str:
        """The output's last ``lines`` lines, without the package resolution report (for failure messages)."""
        kept = [line for line in self.lines() if not _RESOLUTION_REPORT.match(line)]
        return "\n".join(kept[-lines:])

    def wait_for_line(self, pattern: str, timeout: float = 600) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if the job exits or ``timeout`` passes first."""
        def found() -> re.Match[str] | None:
            matches = self.matches(pattern)
            if matches:
                return matches[0]
            if self.poll() is not None:
                matches = self.matches(pattern)  # written just before the exit
                if matches:
                    return matches[0]
                raise AssertionError(f"{self.job} exited ({self.returncode}) before printing /{pattern}/:\n"
                                     f"{self.tail()}")
            return None

        try:
            return wait_for(found, timeout, f"/{pattern}/ in the output of {self.job}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{self.tail()}") from None

    # ------------------------------------------------------------------------------------- processes

    def driver_pid(self, timeout: float = 300) -> int:
        """The Python driver (running ``jobs/<job>``), a child of the spark-submit JVM."""
        if self._driver is not None:
            return self._driver
        script = str(PROJECT_ROOT / "jobs" / self.job)

        def find() -> int | None:
            for child in child_pids(self.pid):
                command = command_line(child)  # spark-class's launcher has the script among its arguments too
                if len(command) >= 2 and Path(command[0]).name.startswith("python") and command[1] == script:
                    return child
            if self.poll() is not None:
                raise AssertionError(f"{self.job} exited ({self.returncode}) before its driver was found:\n"
                                     f"{self.tail()}")
            return None

        driver = wait_for(find, timeout, f"the Python driver of {self.job}", interval=0.05)
        with contextlib.suppress(OSError):
            self.driver_started_at = time.monotonic() - process_age_seconds(driver)
        self._driver = driver
        return driver

    def signal_submit(self, sig: int) -> None:
        """Send ``sig`` to the spark-submit JVM."""
        os.kill(self.pid, sig)

    def signal_driver(self, sig: int) -> None:
        """Send ``sig`` to the Python driver."""
        os.kill(self.driver_pid(), sig)

    def poll(self) -> int | None:
        assert self.process is not None, "start() first"
        code = self.process.poll()
        if code is not None and self.ended_at is None:
            self.ended_at = time.monotonic()
        return code

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def wait(self, timeout: float = 900) -> int:
        """The exit code; on timeout the job is killed and ``TimeoutError`` carries its output's tail."""
        try:
            wait_for(lambda: self.poll() is not None, timeout, f"{self.job} to exit")
        except TimeoutError as error:
            self.kill()
            raise TimeoutError(f"{error}:\n{self.tail()}") from None
        code = self.poll()
        assert code is not None
        return code

    def seconds_to_exit(self, since: float | None = None) -> float:
        """Seconds from ``since`` (a ``time.monotonic()``; default: spark-submit's start) to the exit."""
        assert self.ended_at is not None, f"{self.job} has not exited"
        return self.ended_at - (self.started_at if since is None else since)

    def driver_seconds_to_exit(self) -> float:
        """Seconds from the Python driver's start (JVM start-up excluded) to the exit."""
        assert self.driver_started_at is not None, "call driver_pid() while the driver runs"
        return self.seconds_to_exit(self.driver_started_at)

    def run(self, timeout: float = 900) -> int:
        """Start, wait, return the exit code."""
        return self.start().wait(timeout)

    def kill(self) -> None:
        """SIGKILL every process of the job (the JVM, the driver, Spark's Python workers)."""
        if self.process is not None:
            _kill_group(self.process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
            self.poll()

    def __enter__(self) -> BackgroundJob:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        elif self.process is not None:
            _kill_group(self.process)  # Python workers a dead JVM may have left behind


# -------------------------------------------------------------------------------- standalone cluster


def bare_python(folder: Path) -> Path:
    """A Python with nothing installed (a virtualenv of the base interpreter, no pip): executors using it
    have only what a job ships to them."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(folder)],
                   check=True, capture_output=True)
    python = folder / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, check=False)
    assert probe.returncode != 0, f"{python} can import numpy: not a bare Python"
    return python


@contextlib.contextmanager
def standalone_cluster(work: Path, python: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A standalone master and two one-core workers on 127.0.0.1 whose Python is ``python``; yields the master
    URL. (A job's executors run the Python its driver names, ``spark.pyspark.python`` or ``PYSPARK_PYTHON``.)"""
    spark_class = str(BIN / "spark-class")
    import pyspark

    # The nodes' own configuration folder holds only ``java-opts``, the options Spark's launcher gives every JVM it
    # builds on them: the master, the workers and the executors they start (which SPARK_SUBMIT_OPTS never reaches)
    # run with the short-JVM options, whichever job submits to the cluster.
    conf = work / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "java-opts").write_text(SHORT_JVM_OPTS + "\n")
    # SPARK_HOME set, as on a cluster's nodes: pyspark's launcher would otherwise look for it with PYSPARK_PYTHON
    environment = {**(env if env is not None else os.environ), "SPARK_LOCAL_IP": "127.0.0.1",
                   "PYSPARK_PYTHON": str(python), "SPARK_HOME": str(Path(pyspark.__file__).parent),
                   "SPARK_CONF_DIR": str(conf)}
    port, ui = free_port(), free_port()
    processes = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(ui)], env=environment,
                                  stdout=subprocess.DEVNULL, stderr=(work / "master.log").open("w"))]
    master = f"spark://127.0.0.1:{port}"
    try:
        wait_for(lambda: port_open(port), 120, "the standalone master")
        for index in range(2):
            processes.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1500m", "--webui-port", str(free_port()), "--work-dir", str(work / f"worker{index}")],
                env=environment, stdout=subprocess.DEVNULL, stderr=(work / f"worker{index}.log").open("w")))

        def two_workers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
                    return int(json.load(response).get("aliveworkers", 0)) == 2
            except (OSError, ValueError, http.client.HTTPException):  # not up yet, or answering before it is ready
                return False

        wait_for(two_workers, 120, "two workers to register")
        yield master
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
