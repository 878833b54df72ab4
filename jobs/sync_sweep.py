"""Complete what MLflow and the results table lack of a sweep, from its checkpoint, without training.

After an MLflow outage (the sweep job exited 4), or to rebuild a sweep's runs in MLflow:

    spark-submit jobs/sync_sweep.py --set sweep.id=ID [--env ENV] [--set key=value ...]

The configuration must be the sweep's own (a sweep id started with other settings is refused).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job


def main(argv: Sequence[str]) -> int:
    return command_main("sync", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
