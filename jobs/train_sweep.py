"""Train a linear model for every learning rate of the grid in one pass over a Delta feature table.

    spark-submit jobs/train_sweep.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, run_job
from pipelines.lakehouse.reader import read_feature_table
from pipelines.session import get_spark


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    spark = get_spark(config.spark)
    table = read_feature_table(spark, config.data, config.model.loss)
    print(f"read {table.ref.identifier} at version {table.ref.version}: {table.rows} rows "
          f"({table.rows_dropped_null} dropped for nulls), {len(table.features)} features", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
