"""A Python worker imports what its task needs (numpy, scipy, pyarrow, the kernels, the block format), not
scikit-learn, MLflow, pydantic or pandas (issue 22: about 2.4 s of imports per new worker before).

Why a fresh interpreter, not ``sys.modules`` inside a task of the shared session: the suite's session reuses its
Python workers (``spark.python.worker.reuse``), so a task's worker has already run other tests' tasks (a pandas
UDF, the scoring UDF that loads an MLflow model) and its ``sys.modules`` says nothing about this task. A new
worker is a fork of ``pyspark.daemon``, which has imported ``pyspark.worker`` and nothing of lrsweep; what the
worker imports after that is what unpickling and running the task's command pulls in. So the test runs Spark's
own jobs on the shared session and then replays their commands in a fresh ``python``:

* staging (``build_blocks``'s ``mapInArrow``): the exact bytes Spark ships to the workers, read back from the
  cached blocks' logical plan in the JVM (the ``MapInArrow`` node's Python function), unpickled with PySpark's
  serializer and run over the same rows;
* training and evaluation (the engine's task function, one job of local SGD): the closure the engine handed to
  the Spark executor, pickled with PySpark's serializer as Spark pickles a task's command, run on the blocks
  the Spark tasks staged in the executor-local folder (``load_staged``, as the Spark task reads them); its result
  must be the bytes the Spark task returned, so the replay is the task, not a look-alike.

The held-out evaluation (:mod:`pipelines.distributed.evaluation`) is imported too: its task closes over the
encoding and the metric kernels, already covered by the two replays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.serializers import CloudPickleSerializer

from pipelines.distributed.blocks import BlockSet, PartitionBlocks, build_blocks
from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.distributed.executors import SparkExecutor
from pipelines.distributed.strategies import LocalSGD
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.features.split import VALIDATION_COLUMN
from pipelines.identifiers import positional_columns
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Regularization
from pipelines.sgd.schedules import ScheduleSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Packages a worker must not import (the first component of a module's name).
HEAVY = ("sklearn", "mlflow", "pydantic", "pandas")

ENCODING = TableEncoding([
    ColumnEncoding("age", "number", 1, means=(40.0,), scales=(12.0,)),
    ColumnEncoding("emb", "array", 2, means=(0.0, 0.0), scales=(1.0, 1.0)),
    ColumnEncoding("plan", "onehot", 3, categories=("basic", "gold")),
    ColumnEncoding("city", "hashed", 16, buckets=16),
])

REPLAY = r"""
import json, pickle, sys, time
started = time.perf_counter()
import pyspark.worker  # what pyspark.daemon has imported before it forks a worker
daemon_modules = set(sys.modules)
import pyarrow as pa
from pyspark.serializers import CloudPickleSerializer

work = sys.argv[1]
serializer = CloudPickleSerializer()
with open(f"{work}/staging.command", "rb") as f:
    pack, _ = serializer.loads(f.read())
rows = pa.ipc.open_file(f"{work}/rows.arrow").read_all()
packed = list(pack(iter(rows.to_batches())))
with open(f"{work}/training.command", "rb") as f:
    compute = serializer.loads(f.read())
from pipelines.distributed.blocks import load_staged  # the Spark task's own reader of the staged copies
with open(f"{work}/partitions.json") as f:
    staging_dir, partitions = json.load(f)
results = [compute(load_staged(staging_dir, partition)) for partition in partitions]
import pipelines.distributed.evaluation
with open(f"{work}/results.pickle", "wb") as f:
    pickle.dump(results, f, protocol=5)
print(json.dumps({"modules": sorted(set(sys.modules) - daemon_modules), "daemon": sorted(daemon_modules),
                  "packed_rows": sum(batch.column("rows")[0].as_py() for batch in packed),
                  "seconds": time.perf_counter() - started}))
"""


@dataclass
class RecordingExecutor:
    """The Spark executor, keeping each task function it is given and what the Spark tasks returned."""

    spark_executor: SparkExecutor
    name: str = "spark"
    computes: list[Callable[[PartitionBlocks], Any]] = field(default_factory=list)
    results: list[list[Any]] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return self.spark_executor.n_features

    @property
    def train_rows(self) -> tuple[int, ...]:
        return self.spark_executor.train_rows

    def map(self, compute: Callable[[PartitionBlocks], Any]) -> list[Any]:
        self.computes.append(compute)
        self.results.append(self.spark_executor.map(compute))
        return self.results[-1]


def _rows(n: int) -> list[tuple[Any, ...]]:
    draw = np.random.default_rng(22)
    plans, cities = ["basic", "gold", "silver", None], ["paris", "lyon", "nice", "lille", "brest"]
    return [(float(draw.random() < 0.4), float(draw.normal(40, 12)), [float(draw.normal()), float(draw.normal())],
             plans[int(draw.integers(4))], cities[int(draw.integers(5))], bool(draw.random() < 0.2))
            for _ in range(n)]


def _assert_same_bits(replayed: Any, expected: Any, where: str = "results") -> None:
    """The same values to the bit: arrays of the same dtype, shape and bytes, dataclasses field by field."""
    if isinstance(expected, np.ndarray):
        assert isinstance(replayed, np.ndarray) and replayed.dtype == expected.dtype, where
        assert replayed.shape == expected.shape and replayed.tobytes() == expected.tobytes(), where
    elif dataclasses.is_dataclass(expected):
        assert type(replayed) is type(expected), where
        for item in dataclasses.fields(expected):
            _assert_same_bits(getattr(replayed, item.name), getattr(expected, item.name), f"{where}.{item.name}")
    elif isinstance(expected, list | tuple):
        assert type(replayed) is type(expected) and len(replayed) == len(expected), where
        for index, (left, right) in enumerate(zip(replayed, expected, strict=True)):
            _assert_same_bits(left, right, f"{where}[{index}]")
    elif isinstance(expected, dict):
        assert type(replayed) is type(expected) and replayed.keys() == expected.keys(), where
        for key in expected:
            _assert_same_bits(replayed[key], expected[key], f"{where}[{key!r}]")
    else:
        assert type(replayed) is type(expected) and replayed == expected, where


def _staging_command(spark: SparkSession, blocks: BlockSet) -> bytes:
    """The pickled Python function of the ``MapInArrow`` node in the blocks' plan: the bytes a worker reads."""
    def nodes(node: Any) -> Iterator[Any]:
        yield node
        children = node.children()
        for index in range(children.size()):
            yield from nodes(children.apply(index))

    plan = blocks.dataframe._jdf.queryExecution().analyzed()
    (map_in_arrow,) = [n for n in nodes(plan) if n.getClass().getSimpleName() == "MapInArrow"]
    byte_tag = getattr(getattr(spark._jvm, "scala.reflect.ClassTag$"), "MODULE$").Byte()
    return bytes(map_in_arrow.functionExpr().func().command().toArray(byte_tag))


def test_a_fresh_worker_runs_the_staging_and_training_tasks_without_sklearn_mlflow_pydantic_or_pandas(
        spark: SparkSession, tmp_path: Path) -> None:
    columns = ["label", "age", "emb", "plan", "city", VALIDATION_COLUMN]
    rows = spark.createDataFrame(_rows(600), "label DOUBLE, age DOUBLE, emb ARRAY<DOUBLE>, plan STRING, city STRING, "
                                             f"{VALIDATION_COLUMN} BOOLEAN")
    blocks = build_blocks(rows, "label", ENCODING, num_partitions=2, block_rows=128)
    try:
        problem = TrainingProblem("logistic", True, Regularization(), OptimizerSpec("sgd"), ScheduleSpec(), 0.0)
        rates = [0.01, 0.1]
        executor = RecordingExecutor(SparkExecutor(blocks))
        trainer = GridTrainer(executor, problem, LocalSGD(batch_size=16), ModelRows.zeros(
            rates, [7, 7], problem.regularization.rows(len(rates)), blocks.n_features, problem.optimizer), epochs=1)
        trainer.run_epoch(1, [0, 1], [0, 1])  # one Spark job: train and evaluate every partition

        (tmp_path / "staging.command").write_bytes(_staging_command(spark, blocks))
        (tmp_path / "training.command").write_bytes(CloudPickleSerializer().dumps(executor.computes[0]))
        partitions = [p for p in range(blocks.num_partitions) if blocks.train_rows[p] + blocks.val_rows[p]]
        (tmp_path / "partitions.json").write_text(json.dumps([blocks.staging_dir, partitions]))
        arrow_rows = positional_columns(rows, columns).toArrow()
        with pa.ipc.new_file(str(tmp_path / "rows.arrow"), arrow_rows.schema) as writer:
            writer.write_table(arrow_rows)

        replay = subprocess.run([sys.executable, "-c", REPLAY, str(tmp_path)], capture_output=True, text=True,
                                timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert replay.returncode == 0, replay.stderr[-3000:]
        report = json.loads(replay.stdout.strip().splitlines()[-1])
    finally:
        blocks.release()

    imported = set(report["modules"])
    daemon = set(report["daemon"])
    # the replay is the real work: every row packed, and the training results are the Spark tasks' own bytes
    assert report["packed_rows"] == 600
    replayed = pickle.loads((tmp_path / "results.pickle").read_bytes())
    _assert_same_bits(replayed, executor.results[0])
    assert {"pipelines.features.encoding", "pipelines.features.hashing", "pipelines.distributed.engine",
            "pipelines.sgd.kernels", "scipy.sparse"} <= imported
    heavy = sorted(m for m in imported | daemon if m.split(".")[0] in HEAVY)
    assert heavy == [], f"a worker's tasks import {heavy[:20]}"
