"""Smith's learning-rate range test on a Delta feature table, distributed on Spark, logged as one MLflow run.

The rate grows exponentially from ``range_test.min_lr`` to ``range_test.max_lr`` over ``range_test.num_steps``
mini-batch steps (one Spark job each) until the smoothed loss diverges; prints the suggested rate.

    spark-submit jobs/range_test.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job


def main(argv: Sequence[str]) -> int:
    return command_main("range-test", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
