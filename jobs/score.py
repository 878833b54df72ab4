"""Score a Delta table with a registered model (default ``models:/<tracking.registered_model>@champion``).

    spark-submit jobs/score.py [--env ENV] [--set scoring.model_uri=models:/NAME/3] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, raise_on_sigterm, run_job
from pipelines.orchestration.score import score_table
from pipelines.session import get_spark


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    raise_on_sigterm()
    spark = get_spark(config.spark)
    print(score_table(spark, config).describe(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
