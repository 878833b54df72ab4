"""Smith's learning-rate range test on a Delta feature table, distributed on Spark, logged as one MLflow run.

The rate grows exponentially from ``range_test.min_lr`` to ``range_test.max_lr`` over ``range_test.num_steps``
mini-batch steps (one Spark job each) until the smoothed loss diverges; prints the suggested rate.

    spark-submit jobs/lr_range_test.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, raise_on_sigterm, run_job
from pipelines.orchestration.range_test import run_tracked_range_test
from pipelines.session import get_spark
from pipelines.sweep.range_test import SUGGESTION_RULE


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    raise_on_sigterm()
    spark = get_spark(config.spark)
    report = run_tracked_range_test(spark, config, progress=lambda line: print(line, flush=True))
    result = report.result
    print(f"range test run {report.run_id}: {result.steps} steps"
          f"{' (stopped early: loss diverged)' if result.stopped_early else ''}, minimum smoothed loss at "
          f"lr={result.min_loss_rate:.4g}, {report.seconds:.1f} s", flush=True)
    print(f"suggested learning rate: {result.suggestion:.6g} ({SUGGESTION_RULE})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
