"""Write the demo churn feature table to Delta at ``data.table`` (version 0, then an append as version 1).

    spark-submit jobs/make_demo_table.py [--env ENV] [--set demo.rows=1000000] [--set data.table=PATH]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job


def main(argv: Sequence[str]) -> int:
    return command_main("demo-table", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
