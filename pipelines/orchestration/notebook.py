"""What every notebook does first: settle the working folder, load the configuration, start Spark.

    from pipelines.orchestration.notebook import start_notebook
    config, spark = start_notebook(ENV, OVERRIDES, workdir=WORKDIR)

Relative outputs (a new sqlite store's neighbours, ``spark-warehouse``) go to ``workdir``, by default the
project root, where they are git-ignored. The notebook's kernel must run the project's interpreter (the
``.venv`` that ``make`` builds), where :mod:`pipelines` is installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import PROJECT_ROOT
from pipelines.config import DEFAULT_ENV, Config, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def start_notebook(env: str = DEFAULT_ENV, overrides: Sequence[str] = (), workdir: str | Path | None = None,
                   spark: bool = True) -> tuple[Config, SparkSession | None]:
    """Change to ``workdir`` (default: the project root), load the configuration, start Spark (``spark``).

    Prints where it runs, so an executed notebook records its set-up.
    """
    os.chdir(workdir or PROJECT_ROOT)
    config = load_config(env, overrides)
    session = None
    if spark:
        from pipelines.session import get_spark

        session = get_spark(config.spark)
    print(f"project root {PROJECT_ROOT}, working in {Path.cwd()}, python {sys.executable}"
          + (f", Spark {session.version}" if session is not None else ""))
    return config, session
