"""SIGTERM and SIGINT as a request to stop at the next safe point, in both ways a driver is launched.

The handler only records the signal; it never raises. The sweep checks :attr:`StopRequest.requested` at
every epoch boundary and stops there (:meth:`StopRequest.acknowledge`). An epoch still running after
``cancel_after_seconds`` has its Spark jobs cancelled from another thread (the main thread is usually inside
a py4j call, whose connection cannot be reused from a handler), and any failure raised while a stop is
requested (the cancelled job) counts as the stop. Waiting a moment first lets short epochs end on their
own: a cancelled task makes PySpark's worker print a traceback of its own. The sweep then saves a
checkpoint, ends its runs KILLED and exits 128 + the signal number.

Under ``spark-submit`` the JVM, not Python, receives a scheduler's SIGTERM, and its default handler exits
within a second (its shutdown hooks stop Spark, Python is orphaned). :meth:`StopRequest.install` replaces the
JVM's TERM/INT handlers with one that forwards the signal to Python (a py4j callback), so the driver can still
write to Delta before it exits with the code spark-submit then reports. Under plain ``python`` the JVM is a
child that :func:`pipelines.session.get_spark` starts with SIGTERM ignored, so a signal to the process group
does not kill it either. A watchdog ends the process if the clean-up takes longer than ``grace_seconds``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from pipelines.errors import TerminatedError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

GRACE_SECONDS = 120.0
CANCEL_AFTER_SECONDS = 5.0


class StopRequest:
    """Whether (and by which signal) the job was asked to stop."""

    def __init__(self, grace_seconds: float = GRACE_SECONDS,
                 cancel_after_seconds: float = CANCEL_AFTER_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.cancel_after_seconds = cancel_after_seconds
        self.signum: int | None = None
        self.received_at: float | None = None
        self._event = threading.Event()
        self._spark: SparkSession | None = None
        self._bridge: Any = None
        self._parent_pid = os.getppid()
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()
        self._acknowledged = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def error(self, epoch: int, sweep_id: str) -> TerminatedError:
        """The one-line error a sweep ends with (acknowledges the stop)."""
        return self.terminated(f"at epoch {epoch}; rerun with sweep.id={sweep_id} to resume")

    def terminated(self, detail: str) -> TerminatedError:
        """``terminated by SIGTERM <detail>``, with the signal's exit code (acknowledges the stop)."""
        self.acknowledge()
        return TerminatedError(f"terminated by {self.signal_name} {detail}", self.exit_code)

    def install(self, spark: SparkSession | None = None) -> StopRequest:
        """Handle SIGTERM and SIGINT from now on (call after the SparkSession exists: PySpark installs its own
        SIGINT handler when it starts); under spark-submit also forward the JVM's signals.

        Used as a context manager, the previous Python handlers come back at the end of the block.
        """
        self._spark = spark
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal)
                              for signum in (signal.SIGTERM, signal.SIGINT)}
        if spark is not None and "PYSPARK_GATEWAY_PORT" in os.environ:
            self._forward_jvm_signals(spark)
        return self

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()  # the clean-up is over: no watchdog needed
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def request(self, signum: int) -> None:
        """Ask to stop, as the signal ``signum`` would: at the next safe point, cancelling the running jobs."""
        if self._event.is_set():
            return
        self.signum, self.received_at = signum, time.monotonic()
        self._event.set()
        threading.Thread(target=self._cancel_jobs, name="lrsweep-cancel", daemon=True).start()

    def acknowledge(self) -> None:
        """The job has stopped at a safe point: nothing left to cancel (its clean-up jobs must run)."""
        self._acknowledged.set()

    def jvm_alive(self) -> bool:
        """False when Spark's JVM is gone (spark-submit killed before the forwarding handler took over)."""
        if "PYSPARK_GATEWAY_PORT" in os.environ:
            return os.getppid() == self._parent_pid
        try:
            from pyspark import SparkContext

            process = getattr(SparkContext._gateway, "proc", None)
        except Exception:
            return True
        return process is None or process.poll() is None

    def _on_signal(self, signum: int, frame: object) -> None:
        first = not self._event.is_set()
        self.request(signum)
        if first:  # a clean-up that hangs must not keep a stopped job alive
            threading.Thread(target=self._watchdog, name="lrsweep-stop-watchdog", daemon=True).start()

    def _cancel_jobs(self) -> None:
        spark = self._spark
        if spark is None or self._acknowledged.wait(self.cancel_after_seconds):
            return
        with contextlib.suppress(Exception):  # the JVM may already be gone; the sweep notices its own way
            spark.interruptAll()
        with contextlib.suppress(Exception):  # classic sessions: the engine's RDD jobs carry no session tag
            spark.sparkContext.cancelAllJobs()

    def _watchdog(self) -> None:
        if not self._done.wait(self.grace_seconds):
            os._exit(self.exit_code)

    def _forward_jvm_signals(self, spark: SparkSession) -> None:
        """Replace the spark-submit JVM's TERM/INT handlers by a call back into this process."""
        try:
            from pyspark.java_gateway import ensure_callback_server_started

            context = spark.sparkContext
            jvm, gateway = context._jvm, context._gateway
            assert jvm is not None and gateway is not None
            ensure_callback_server_started(gateway)
            self._bridge = _JvmSignalForwarder(self)
            for name in ("TERM", "INT"):
                jvm.sun.misc.Signal.handle(jvm.sun.misc.Signal(name), self._bridge)
        except Exception:  # best effort: without it a signal to the JVM ends the job as before
            self._bridge = None


class _JvmSignalForwarder:
    """A ``sun.misc.SignalHandler`` implemented in Python through py4j's callback server."""

    def __init__(self, stop: StopRequest) -> None:
        self._stop = stop

    def handle(self, java_signal: Any) -> None:
        signum = getattr(signal, f"SIG{java_signal.getName()}", signal.SIGTERM)
        threading.Thread(target=self._stop._on_signal, args=(signum, None), daemon=True).start()

    class Java:
        implements: ClassVar[list[str]] = ["sun.misc.SignalHandler"]
