"""The pinned feature table as an MLflow dataset input: a Delta source at the exact version trained on."""

from __future__ import annotations

import hashlib
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
    source = DeltaDatasetSource(path=data.identifier if data.is_path else None,
                                delta_table_name=None if data.is_path else data.identifier,
                                delta_table_version=data.version)
    dataset = _PinnedSparkDataset(
        rows=data.rows, df=data.dataframe, source=source, targets=data.label, name=f"{name}@v{data.version}",
        digest=hashlib.md5(f"{data.identifier}@{data.version}".encode()).hexdigest()[:8])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
