"""Smith's learning-rate range test on a Delta feature table, distributed on Spark, logged as one MLflow run.

The rate grows exponentially from ``range_test.min_lr`` to ``range_test.max_lr`` over ``range_test.num_steps``
mini-batch steps (one Spark job each) until the smoothed loss diverges; prints the suggested rate.

    spark-submit jobs/lr_finder.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, run_job, say
from pipelines.orchestration.lr_finder import run_tracked_range_test
from pipelines.orchestration.signals import StopRequest
from pipelines.session import get_spark
from pipelines.sweep.lr_finder import SUGGESTION_RULE
from pipelines.tracking.store import connect


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    store = connect(config.tracking)
    spark = get_spark(config.spark)
    with StopRequest().install(spark) as stop:
        try:
            report = run_tracked_range_test(spark, config, progress=say, store=store)
        except Exception as error:
            if stop.requested:
                raise stop.terminated("during the range test; nothing was logged: rerun it") from error
            raise
    result = report.result
    say(f"range test run {report.run_id}: {result.steps} steps"
        f"{' (stopped early: loss diverged)' if result.stopped_early else ''}, minimum smoothed loss at "
        f"lr={result.min_loss_rate:.4g}, {report.seconds:.1f} s")
    say(f"suggested learning rate: {result.suggestion:.6g} ({SUGGESTION_RULE})")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
