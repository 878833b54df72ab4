"""``python -m pipelines COMMAND ...``: the ``lrsweep`` command (also a ``.py`` file spark-submit can run)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())
