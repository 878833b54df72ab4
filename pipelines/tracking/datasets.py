"""The pinned feature table as an MLflow dataset input: a Delta source at the exact version trained on."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.spark_dataset import SparkDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from pyspark.sql import DataFrame


@dataclass(frozen=True)
class TrainingData:
    """The pinned feature table a sweep trained on, as MLflow should describe it."""

    dataframe: DataFrame
    identifier: str
    version: int
    label: str
    is_path: bool
    rows: int
    since_version: int | None = None  # an incremental read: the rows added after this version


class _LakehouseDeltaSource(DeltaDatasetSource):
    """A Delta source that records what the table is: version 0 included (MLflow's own drops a falsy
    version), and a catalog name flagged as a Unity Catalog table only on Databricks (MLflow flags any name
    and then calls Databricks' REST API for its id)."""

    since_version: int | None = None

    def _is_databricks_uc_table(self) -> bool:
        name = self._delta_table_name
        return bool(name and os.environ.get("DATABRICKS_RUNTIME_VERSION") and name.count(".") == 2
                    and super()._is_databricks_uc_table())

    def to_dict(self) -> dict[Any, Any]:
        info: dict[Any, Any] = super().to_dict()
        if self._delta_table_version is not None:
            info["delta_table_version"] = self._delta_table_version
        if getattr(self, "since_version", None) is not None:
            info["since_version"] = self.since_version  # the rows added after it, up to delta_table_version
        return info


class _PinnedSparkDataset(SparkDataset):
    """A Spark dataset whose profile is the known row count (MLflow's default runs an approximate count job)."""

    def __init__(self, rows: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows = rows

    @property
    def profile(self) -> Any | None:
        return {"num_rows": self._rows}


def dataset_input(data: TrainingData) -> DatasetInput:
    """An MLflow dataset input (context ``training``) with a Delta source at ``data.version``.

    The digest is derived from the table and version, so every run of a sweep logs the same dataset.
    """
    name = data.identifier.rstrip("/").rsplit("/", 1)[-1]
    source = _LakehouseDeltaSource(path=data.identifier if data.is_path else None,
                                   delta_table_name=None if data.is_path else data.identifier,
                                   delta_table_version=data.version)
    source.since_version = data.since_version
    versions = f"v{data.version}" if data.since_version is None else f"v{data.since_version + 1}-v{data.version}"
    dataset = _PinnedSparkDataset(
        rows=data.rows, df=data.dataframe, source=source, targets=data.label, name=f"{name}@{versions}",
        # a whole version's digest is the one earlier releases logged (``path@7``), so its reruns find it
        digest=hashlib.md5(f"{data.identifier}@{data.version if data.since_version is None else versions}"
                           .encode()).hexdigest()[:8])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
