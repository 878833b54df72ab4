"""Metrics of one model on rows that are not in the blocks (the held-out test split), in one Spark pass.

Each partition encodes its rows (:meth:`~pipelines.features.encoding.TableEncoding.encode`) and returns its
:class:`~pipelines.sgd.metrics.MetricAccumulator`; the driver merges them in partition order, so the result
is reproducible bit for bit.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from pipelines.features.arrays import arrow_of, numpy_of
from pipelines.features.encoding import TableEncoding
from pipelines.identifiers import map_in_arrow
from pipelines.sgd._types import FloatArray
from pipelines.sgd.design import SplitDesign
from pipelines.sgd.losses import Loss
from pipelines.sgd.metrics import MetricAccumulator


def evaluate_rows(rows: DataFrame, label: str, encoding: TableEncoding, weights: FloatArray,
                  intercept: float | FloatArray, loss: Loss, weight: str | None = None) -> dict[str, float] | None:
    """``{"loss": ..., "auc": ..., "count": ...}`` (the loss's validation metrics) of the model ``weights``
    ``(d,)``, ``intercept`` (a multinomial model: ``(C, d)`` and ``(C,)``) on ``rows`` (label as double, the
    encoding's columns, ``weight`` when given); None when there are no rows."""
    columns = [label, *encoding.source_columns, *([weight] if weight else [])]
    model_weights = np.atleast_2d(weights)
    model_intercepts = np.atleast_1d(np.asarray(intercept, dtype=np.float64))

    def evaluate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        total: MetricAccumulator | None = None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            block = encoding.encode(batch)
            X = block.dense if block.sparse is None else SplitDesign(block.dense, block.sparse)
            y = numpy_of(batch.column(label), np.float64)
            sample_weight = numpy_of(batch.column(weight), np.float64) if weight else None
            with np.errstate(over="ignore", invalid="ignore"):
                part = MetricAccumulator.from_block(X, y, model_weights, model_intercepts, loss,
                                                    sample_weight=sample_weight)
            total = part if total is None else total.merge(part)
        if total is not None:
            context = TaskContext.get()
            yield pa.RecordBatch.from_pydict({
                "partition": arrow_of([context.partitionId() if context else 0], pa.int32()),
                "payload": arrow_of([pickle.dumps(total.to_arrays(), protocol=5)], pa.binary())})

    parts = map_in_arrow(rows, columns, evaluate, "partition INT, payload BINARY").collect()
    if not parts:
        return None
    merged: MetricAccumulator | None = None
    for part in sorted(parts, key=lambda r: int(r["partition"])):
        accumulator = MetricAccumulator.from_arrays(loss.name, pickle.loads(part["payload"]))
        merged = accumulator if merged is None else merged.merge(accumulator)
    assert merged is not None
    return {name: float(values[0]) for name, values in merged.compute().items()}
