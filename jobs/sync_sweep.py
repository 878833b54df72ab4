"""Complete what MLflow and the results table lack of a sweep, from its checkpoint, without training.

After an MLflow outage (the sweep job exited 4), or to rebuild a sweep's runs in MLflow:

    spark-submit jobs/sync_sweep.py --set sweep.id=ID [--env ENV] [--set key=value ...]

The configuration must be the sweep's own (a sweep id started with other settings is refused).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, run_job, say
from pipelines.errors import ConfigError
from pipelines.orchestration.sweep import run_sweep_job


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    if config.sweep.id is None:
        raise ConfigError("sweep.id: required by the sync job (--set sweep.id=ID)")
    run_sweep_job(config, train=False, say=say)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
