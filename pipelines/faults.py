"""Fault injection for resilience tests: crash a Python worker, an executor or the driver once, slow every task, or
make the journal synchronous.

Enabled only by the environment variable ``LRSWEEP_INJECT_FAULT`` (on the executors, pass it with
``--conf spark.executorEnv.LRSWEEP_INJECT_FAULT=...``), formatted ``KIND:epoch=E:partition=P:once=PATH``
with ``KIND`` one of

* ``python_worker``: the Python worker running that task exits abruptly;
* ``executor``: the executor JVM that runs the task is killed (its cached blocks are lost);
* ``sleep:seconds=S``: every training and evaluation task sleeps ``S`` seconds (a slow cluster), so a test
  can act while a sweep is at a known epoch (no ``epoch``, ``partition`` or ``once``);
* ``driver_kill:stage=NAME:once=PATH`` (read by the driver): the driver process kills itself with SIGKILL
  in the middle of a writing stage, as a machine failure would: ``checkpoint`` (the file written under its
  temporary name, not yet renamed), ``journal_create`` (the results table's first data files written, its
  first commit not yet made: a watcher kills as soon as a data file appears), ``journal_append`` (an append
  to the existing table committed, the journal not yet told), ``register`` (a model version created, the
  parent run not yet told), ``merge`` (the final MERGE about to run);
* ``journal_sync`` (read by the driver): each checkpoint waits for its journal append to commit, as if the
  journal had no thread of its own, so a test knows which epochs the results table holds when it kills the
  driver (without it, a slow first commit lets training run on, and the epochs a kill leaves depend on the
  machine's speed).

Several faults are separated by commas (``python_worker:...,executor:...``); each fires on its own.

The crash faults fire once: the first task to reach it creates the marker file ``PATH`` (exclusively) and
crashes; later attempts find the marker and run normally, so Spark's retry succeeds. The test checks that
the results equal an undisturbed run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

ENV_VAR = "LRSWEEP_INJECT_FAULT"


DRIVER_KILL = "driver_kill"
JOURNAL_SYNC = "journal_sync"
WATCH_SECONDS = 120.0


def _settings() -> list[tuple[str, dict[str, str]]]:
    """``LRSWEEP_INJECT_FAULT``'s faults, each as its kind and its ``key=value`` pairs."""
    faults = []
    for setting in os.environ.get(ENV_VAR, "").split(","):
        if setting:
            kind, *pairs = setting.split(":")
            faults.append((kind, dict(pair.split("=", 1) for pair in pairs if "=" in pair)))
    return faults


def maybe_inject_fault(epoch: int, partition: int) -> None:
    """Crash here if ``LRSWEEP_INJECT_FAULT`` names this epoch and partition (first attempt only)."""
    for kind, wanted in _settings():
        if kind not in (DRIVER_KILL, JOURNAL_SYNC):
            _inject(kind, wanted, epoch, partition)


def journal_synchronous() -> bool:
    """Whether a ``journal_sync`` fault asks each checkpoint to wait for its journal append."""
    return any(kind == JOURNAL_SYNC for kind, _ in _settings())


def _driver_kill(stage: str) -> str | None:
    """The ``once`` marker of a ``driver_kill`` fault armed for ``stage``, if any (and not yet fired)."""
    for kind, wanted in _settings():
        if kind == DRIVER_KILL and wanted.get("stage") == stage and not os.path.exists(wanted["once"]):
            return wanted["once"]
    return None


def kill_point(stage: str) -> None:
    """SIGKILL this process here if a ``driver_kill`` fault names ``stage`` (once)."""
    marker = _driver_kill(stage)
    if marker is not None:
        _kill(marker)


def kill_when(stage: str, condition: Callable[[], bool]) -> None:
    """SIGKILL this process as soon as ``condition()`` holds, from a watcher thread, if a ``driver_kill`` fault
    names ``stage`` (once): to stop a write that happens inside the JVM half way."""
    marker = _driver_kill(stage)
    if marker is None:
        return

    def watch() -> None:
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if condition():
                    _kill(marker)
            time.sleep(0.001)

    threading.Thread(target=watch, name=f"lrsweep-fault-{stage}", daemon=True).start()


def _kill(marker: str) -> None:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(kind: str, wanted: dict[str, str], epoch: int, partition: int) -> None:
    if kind == "sleep":
        time.sleep(float(wanted.get("seconds", "1")))
        return
    if int(wanted.get("epoch", -1)) != epoch or int(wanted.get("partition", -1)) != partition:
        return
    try:
        marker = os.open(wanted["once"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(marker)
    if kind == "python_worker":
        os._exit(17)
    if kind == "executor":
        daemon = os.getppid()  # worker <- pyspark daemon <- executor JVM
        with open(f"/proc/{daemon}/stat") as stat:
            executor_jvm = int(stat.read().rsplit(")", 1)[1].split()[1])
        os.kill(executor_jvm, signal.SIGKILL)
        os._exit(17)
    raise ValueError(f"{ENV_VAR}: fault kind {kind!r} must be python_worker, executor, sleep, driver_kill or "
                     f"journal_sync")
