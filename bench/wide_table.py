"""Benchmark: a wide numeric table (default 10,000 columns x 2,000 rows) through the normal sweep, in-process.

    .venv/bin/python bench/wide_table.py                      # 10,000 x 2,000, 2 rates, 2 epochs
    .venv/bin/python bench/wide_table.py --columns 2000 --rows 2000

Writes the table as a Delta table (delta-rs, so writing it costs Spark nothing), then runs
:func:`pipelines.orchestration.sweep.run_tracked_sweep` on it with a sqlite MLflow store, as ``lrsweep sweep``
would, and measures:

* ``sweep_seconds``        wall time of the sweep (read and checks, encoding, blocks, training, journal, tracking);
* ``python_peak_rss_mb``   the Python driver's peak RSS (``getrusage(RUSAGE_SELF)``);
* ``jvm_peak_rss_mb``      the driver JVM's peak RSS (``VmHWM`` of the Java child process, read at the end);
* ``workers_peak_rss_mb``  the largest peak RSS among the Python workers still alive at the end.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil


def write_wide_table(path: str, rows: int, columns: int, seed: int = 21) -> None:
    """``x0 .. x{columns-1}`` standard normal doubles and a 0/1 ``label`` from the first 20 of them."""
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, columns))
    z = X[:, :20] @ rng.normal(size=min(20, columns)) * 0.5
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(columns)])
    frame["label"] = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.int64)
    write_deltalake(path, frame)


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set) of a live process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--columns", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--driver-memory", default="8g", help="spark.driver.memory (the JVM's heap)")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    from pipelines.config import load_config
    from pipelines.orchestration.sweep import run_tracked_sweep
    from pipelines.session import get_spark

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lrsweep-wide-"))
    table = str(workdir / "wide_features")
    started = time.perf_counter()
    write_wide_table(table, args.rows, args.columns)
    write_seconds = time.perf_counter() - started
    config = load_config(overrides=[
        f"data.table={table}", "data.label=label", f"output.results_table={workdir / 'results'}",
        f"output.predictions_table={workdir / 'predictions'}", f"output.checkpoints={workdir / 'checkpoints'}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "sweep.learning_rates=[0.01, 0.1]",
        f"train.epochs={args.epochs}", "sweep.id=wide-1", "spark.master=local[2]",
        f"spark.conf={{spark.ui.enabled: 'false', spark.driver.memory: {args.driver_memory}}}"])
    spark = get_spark(config.spark)
    started = time.perf_counter()
    report = run_tracked_sweep(spark, config, progress=None)
    sweep_seconds = time.perf_counter() - started

    me = psutil.Process()
    java = [child for child in me.children(recursive=True) if "java" in child.name()]
    workers = [child for child in me.children(recursive=True) if "python" in child.name()]
    result = {
        "rows": args.rows, "columns": args.columns, "epochs": args.epochs, "rates": 2,
        "driver_memory": args.driver_memory,
        "features": len(report.table.features), "write_seconds": round(write_seconds, 1),
        "sweep_seconds": round(sweep_seconds, 1),
        "python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "jvm_peak_rss_mb": round(max((peak_rss_mb(p.pid) for p in java), default=float("nan")), 1),
        "workers_peak_rss_mb": round(max((peak_rss_mb(p.pid) for p in workers), default=float("nan")), 1),
        "phase_seconds": {phase: round(seconds, 1) for phase, seconds in report.phase_seconds.items()},
        "results_rows": report.results_rows,
        "workdir": str(workdir),
    }
    spark.stop()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
