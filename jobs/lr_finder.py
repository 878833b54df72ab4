"""Deprecated name of ``jobs/range_test.py``, kept for one release: one line on stderr, then the same range test.

    spark-submit jobs/lr_finder.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job

DEPRECATION = ("jobs/lr_finder.py is deprecated: use jobs/range_test.py (make range-test); "
               "it will be removed in the next release")


def main(argv: Sequence[str]) -> int:
    print(DEPRECATION, file=sys.stderr, flush=True)
    return command_main("range-test", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
