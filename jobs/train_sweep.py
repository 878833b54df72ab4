"""Train a linear model for every learning rate of the grid in one pass over a Delta feature table.

Tracks a parent MLflow run per sweep and a child run per rate, appends per-epoch results to
``output.results_table``, logs the best model and registers it as ``tracking.register_when`` says.

    spark-submit jobs/train_sweep.py [--env ENV] [--set key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.cli import config_from_args, job_parser, raise_on_sigterm, run_job
from pipelines.orchestration.sweep import run_tracked_sweep
from pipelines.reporting.tables import format_summary
from pipelines.session import get_spark


def main(argv: Sequence[str]) -> int:
    args = job_parser(__doc__ or "").parse_args(argv)
    config = config_from_args(args)
    raise_on_sigterm()
    spark = get_spark(config.spark)
    report = run_tracked_sweep(spark, config, progress=lambda line: print(line, flush=True))
    print(format_summary(report.summary, report.loss), flush=True)
    print(f"sweep {report.sweep_id}: parent run {report.parent_run_id}"
          f"{' (resumed)' if report.resumed else ''}", flush=True)
    print(f"results: {report.results_rows} rows "
          f"{'appended to' if report.results_written else 'already in'} {config.output.results_table}", flush=True)
    if report.registration is not None:
        print(report.registration.describe(config.tracking.registered_model), flush=True)
    elif report.model_uri is None:
        print("no model logged: every rate diverged or was stopped", flush=True)
    outcome = report.run.outcome
    print(f"compute: {outcome.row_passes:,} row-passes of {outcome.full_grid_row_passes:,} for the full grid "
          f"({100 * (1 - outcome.row_passes / outcome.full_grid_row_passes):.1f}% saved by stopping rates)",
          flush=True)
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.phase_seconds.items())
    print(f"time: {report.wall_seconds:.1f} s wall ({phases}), {report.tracking_seconds:.2f} s tracking "
          f"({100 * report.tracking_fraction:.1f}% of wall time: "
          + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in report.tracking_by_label.items()) + ")",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
