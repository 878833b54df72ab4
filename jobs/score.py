"""Score a Delta table with a registered model (default ``models:/<tracking.registered_model>@champion``).

    spark-submit jobs/score.py [--env ENV] [--set scoring.model_uri=models:/NAME/3] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, run_job, say
from pipelines.orchestration.score import score_table
from pipelines.orchestration.signals import StopRequest
from pipelines.session import get_spark


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    spark = get_spark(config.spark)
    with StopRequest().install(spark) as stop:
        try:
            report = score_table(spark, config)
        except Exception as error:
            if stop.requested:
                raise stop.terminated("while scoring; nothing was written (appends are atomic): rerun it") from error
            raise
    say(report.describe())
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
