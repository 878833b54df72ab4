"""Score a Delta table with a registered model (default ``models:/<tracking.registered_model>@champion``).

    spark-submit jobs/score.py [--env ENV] [--set scoring.model_uri=models:/NAME/3] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import command_main, run_job


def main(argv: Sequence[str]) -> int:
    return command_main("score", argv)


if __name__ == "__main__":
    sys.exit(run_job(main))
