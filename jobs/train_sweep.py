"""Train a linear model for every learning rate of the grid in one pass over a Delta feature table.

Tracks a parent MLflow run per sweep and a child run per rate (live, while it trains), journals per-epoch
results to ``output.results_table`` and checkpoints to ``output.checkpoints``, logs the best model and
registers it as ``tracking.register_when`` says. Rerun with the same ``sweep.id`` to resume or complete.

    spark-submit jobs/train_sweep.py [--env ENV] [--set key=value ...] [--progress auto|bar|lines|off] [--verbose]

On a terminal the epochs are one live progress bar, elsewhere one line each (``--progress``); ``--verbose`` adds
each column's encoding and Spark's stage bars (the JVM's start-up warnings, which it prints before the job runs:
``LRSWEEP_JVM_NOISE=NEUTRAL`` in spark-submit's environment; see :mod:`pipelines.console`).

Exit codes: 0 success, 2 bad input, 3 no usable model, 4 MLflow incomplete (rerun), 130/143 signals, 1 bug.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job


def main(argv: Sequence[str]) -> int:
    return command_main("sweep", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
