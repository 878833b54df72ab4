"""Fault injection for resilience tests: crash a Python worker or an executor once, or slow every task.

Enabled only by the environment variable ``LRSWEEP_INJECT_FAULT`` on the executors (pass it with
``--conf spark.executorEnv.LRSWEEP_INJECT_FAULT=...``), formatted ``KIND:epoch=E:partition=P:once=PATH``
with ``KIND`` one of

* ``python_worker``: the Python worker running that task exits abruptly;
* ``executor``: the executor JVM that runs the task is killed (its cached blocks are lost);
* ``sleep:seconds=S``: every training and evaluation task sleeps ``S`` seconds (a slow cluster), so a test
  can act while a sweep is at a known epoch (no ``epoch``, ``partition`` or ``once``).

Several faults are separated by commas (``python_worker:...,executor:...``); each fires on its own.

The crash faults fire once: the first task to reach it creates the marker file ``PATH`` (exclusively) and
crashes; later attempts find the marker and run normally, so Spark's retry succeeds. The test checks that
the results equal an undisturbed run's.
"""

from __future__ import annotations

import os
import signal
import time

ENV_VAR = "LRSWEEP_INJECT_FAULT"


def maybe_inject_fault(epoch: int, partition: int) -> None:
    """Crash here if ``LRSWEEP_INJECT_FAULT`` names this epoch and partition (first attempt only)."""
    for setting in os.environ.get(ENV_VAR, "").split(","):
        if setting:
            _inject(setting, epoch, partition)


def _inject(setting: str, epoch: int, partition: int) -> None:
    kind, *pairs = setting.split(":")
    wanted = dict(pair.split("=", 1) for pair in pairs)
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
    raise ValueError(f"{ENV_VAR}={setting!r}: kind must be python_worker, executor or sleep")
