"""Write the demo churn feature table to Delta at ``data.table`` (version 0, then an append as version 1).

    spark-submit jobs/make_demo_table.py [--env ENV] [--set demo.rows=1000000] [--set data.table=PATH]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, run_job, say
from pipelines.lakehouse.demo_data import write_demo_table
from pipelines.session import get_spark


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    spark = get_spark(config.spark)
    table = write_demo_table(spark, config.demo, config.data.table)
    say(f"demo table {table.path}: {table.rows} rows, versions {list(table.versions)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
