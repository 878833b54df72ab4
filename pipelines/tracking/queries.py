"""Reading sweeps back from MLflow as tables (for notebooks and reports): parents, children, histories."""

from __future__ import annotations

from collections.abc import Sequence

import mlflow
import pandas as pd
from mlflow import MlflowClient

from pipelines.config import TrackingConfig
from pipelines.tracking.runs import TAG_ROLE, TAG_SWEEP_ID
from pipelines.tracking.store import tracking_uri


def sweeps(tracking: TrackingConfig) -> pd.DataFrame:
    """The experiment's sweeps (parent runs), newest first, one row each (``mlflow.search_runs`` columns).

    Raises
    ------
    LookupError
        The experiment does not exist in the store.
    """
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(tracking.experiment)
    if experiment is None:
        raise LookupError(f"no experiment {tracking.experiment!r} in the tracking store: run a sweep first")
    frame: pd.DataFrame = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'parent'",
                                             order_by=["attributes.start_time DESC"])
    frame["sweep_id"] = frame[f"tags.{TAG_SWEEP_ID}"]
    return frame


def sweep_children(tracking: TrackingConfig, parent_run_id: str) -> pd.DataFrame:
    """A sweep's child runs (one per rate, and round), sorted by ``learning_rate`` (a float column)."""
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient(tracking_uri=uri).get_run(parent_run_id).info.experiment_id
    children: pd.DataFrame = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' AND tags.`{TAG_ROLE}` = 'child'")
    children["learning_rate"] = children["params.learning_rate"].astype(float)
    return children.sort_values("learning_rate").reset_index(drop=True)


def metric_histories(tracking: TrackingConfig, children: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Long table ``learning_rate, epoch, metric, value`` of the children's histories (epoch 0: the start)."""
    client = MlflowClient(tracking_uri=tracking_uri(tracking))
    return pd.DataFrame([
        {"learning_rate": child.learning_rate, "epoch": point.step, "metric": name, "value": point.value}
        for child in children.itertuples() for name in metrics
        for point in client.get_metric_history(child.run_id, name)])
