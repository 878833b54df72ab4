"""Fault injection for resilience tests: crash a Python worker or an executor once, mid-job.

Enabled only by the environment variable ``LRSWEEP_INJECT_FAULT`` on the executors (pass it with
``--conf spark.executorEnv.LRSWEEP_INJECT_FAULT=...``), formatted ``KIND:epoch=E:partition=P`` with
``KIND`` one of

* ``python_worker``: the Python worker running that task exits abruptly;
* ``executor``: the executor JVM that runs the task is killed (its cached blocks are lost).

Only the first attempt of the first stage attempt fails, so Spark's retry then succeeds; the test checks
that the results equal an undisturbed run's.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "LRSWEEP_INJECT_FAULT"


def maybe_inject_fault(epoch: int, partition: int) -> None:
    """Crash here if ``LRSWEEP_INJECT_FAULT`` names this epoch and partition (first attempt only)."""
    setting = os.environ.get(ENV_VAR)
    if not setting:
        return
    kind, *pairs = setting.split(":")
    wanted = dict(pair.split("=", 1) for pair in pairs)
    if int(wanted.get("epoch", -1)) != epoch or int(wanted.get("partition", -1)) != partition:
        return
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None or context.attemptNumber() != 0 or context.stageAttemptNumber() != 0:
        return
    if kind == "python_worker":
        os._exit(17)
    if kind == "executor":
        daemon = os.getppid()  # worker <- pyspark daemon <- executor JVM
        with open(f"/proc/{daemon}/stat") as stat:
            executor_jvm = int(stat.read().rsplit(")", 1)[1].split()[1])
        os.kill(executor_jvm, signal.SIGKILL)
        os._exit(17)
    raise ValueError(f"{ENV_VAR}={setting!r}: kind must be python_worker or executor")
