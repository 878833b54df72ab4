"""What every notebook does first: settle the working folder, load the configuration, start Spark.

    from pipelines.orchestration.notebook import start_notebook
    config, spark = start_notebook(ENV, OVERRIDES, workdir=WORKDIR)

Relative outputs (a new sqlite store's neighbours, ``spark-warehouse``) go to ``workdir``, by default the
project root, where they are git-ignored. What Spark's JVM prints (its package resolution, its logs) goes to
``spark-notebook.log`` there, not into the notebook. The notebook's kernel must run the project's interpreter (the
``.venv`` that ``make`` builds), where :mod:`pipelines` is installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import PROJECT_ROOT
from pipelines.config import DEFAULT_ENV, Config, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def start_notebook(env: str = DEFAULT_ENV, overrides: Sequence[str] = (), workdir: str | Path | None = None,
                   spark: bool = True) -> tuple[Config, SparkSession | None]:
    """Change to ``workdir`` (default: the checkout's root, when the package runs from one), load the
    configuration, start Spark (``spark``).

    Prints where it runs, so an executed notebook records its set-up.
    """
    checkout = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else None
    target = workdir or checkout
    if target is not None:
        os.chdir(target)
    config = load_config(env, overrides)
    session = None
    if spark:
        from pipelines.session import get_spark

        with _jvm_output_to(Path("spark-notebook.log")):  # not ~50 lines of Ivy resolution in the notebook
            session = get_spark(config.spark)
    print(f"project root {PROJECT_ROOT}, working in {Path.cwd()}, python {sys.executable}"
          + (f", Spark {session.version}" if session is not None else ""))
    return config, session


@contextmanager
def _jvm_output_to(log: Path) -> Iterator[None]:
    """While Spark's JVM starts, point this process's stdout and stderr at ``log``: the JVM inherits them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
