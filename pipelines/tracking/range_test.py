"""A learning-rate range test as an MLflow run: its curves per step, the suggestion and the figure.

Metrics, each with ``step`` = the range test's iteration (0-based):

* ``range_test_loss``: the raw mini-batch objective (non-finite values are left out);
* ``range_test_smoothed_loss``: the bias-corrected moving average;
* ``learning_rate``: the step's rate;

plus ``suggested_learning_rate``, ``min_loss_learning_rate`` and ``range_test_steps`` (step 0). The
suggestion and the rule are parameters too; the figure is ``figures/range_test.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.run_status import RunStatus

from pipelines.sweep.range_test import SUGGESTION_RULE, RangeTestResult

RANGE_TEST_FIGURE = "figures/range_test.png"
MAX_METRICS_PER_BATCH = 1000


def range_test_metrics(result: RangeTestResult, timestamp_ms: int) -> list[Metric]:
    """Every finite per-step value (``step`` = iteration) and the summary values at step 0."""
    metrics: list[Metric] = []
    for name, values in (("range_test_loss", result.losses), ("range_test_smoothed_loss", result.smoothed_losses),
                         ("learning_rate", result.learning_rates)):
        metrics += [Metric(name, float(value), timestamp_ms, step) for step, value in enumerate(values)
                    if math.isfinite(value)]
    metrics += [Metric("suggested_learning_rate", result.suggestion, timestamp_ms, 0),
                Metric("min_loss_learning_rate", result.min_loss_rate, timestamp_ms, 0),
                Metric("range_test_steps", float(result.steps), timestamp_ms, 0)]
    return metrics


def range_test_params(result: RangeTestResult) -> dict[str, str]:
    return {"suggested_learning_rate": repr(result.suggestion), "suggestion_rule": SUGGESTION_RULE,
            "stopped_early": str(result.stopped_early)}


def log_range_test(client: MlflowClient, experiment_id: str, result: RangeTestResult, figure: Figure, *,
                   params: Mapping[str, str], tags: Mapping[str, str], run_name: str = "lr range test") -> str:
    """Create a FINISHED run holding the range test; ``tags`` may name a parent (``mlflow.parentRunId``).

    A failure while logging ends the run FAILED and re-raises.
    """
    run_id: str = client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
    try:
        all_params = {**params, **range_test_params(result)}
        client.log_batch(run_id, params=[Param(key, value) for key, value in all_params.items()],
                         tags=[RunTag("lrsweep.suggestion_rule", SUGGESTION_RULE)])
        metrics = range_test_metrics(result, int(time.time() * 1000))
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
        client.log_figure(run_id, figure, RANGE_TEST_FIGURE)
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
