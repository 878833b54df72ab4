"""Where the engine's tasks run: a Spark job over the cached blocks, or a loop in the driver process.

The engine (:mod:`pipelines.distributed.engine`, :mod:`pipelines.distributed.range_test`) writes a task as a
function of one partition's :class:`~pipelines.distributed.blocks.PartitionBlocks` and hands it to an
executor, which maps it over the non-empty partitions and returns the results in partition order:

``spark`` (:class:`SparkExecutor`)
    one Spark job per call over the staged blocks (:func:`~pipelines.distributed.blocks.map_partitions`): the
    path for large tables and clusters.
``driver`` (:class:`DriverExecutor`)
    the same task function called in the driver process over the same partitions' arrays, collected from Spark's
    cache once, the partitions side by side on threads (one per CPU the process may run on, at most one per
    partition: the compiled kernels release the GIL), the results in partition order. No job, no pickling: on a
    small table an empty Spark job costs more than the epoch itself (see :func:`choose_executor`).

Same partitioning, same task function and the same combination in partition order: a sweep gives the same
bits under either executor (and a checkpoint written under one resumes under the other).

:func:`choose_executor` turns ``train.executor`` (``auto | spark | driver``) and the data's size into the
executor's name and the reason the job prints. ``auto``'s threshold, ``train.driver_max_cells`` (training rows x
model rows x inputs), is where a driver epoch costs what an empty Spark job costs. Measured on this machine kind
(2 cores, ``local[2]``; ``make bench BENCH_ARGS="--only small-tables"``): an empty job over the staged blocks
costs 0.085-0.18 s idle (0.24-0.28 s loaded), a local_sgd epoch in the driver (training on two threads, and the
evaluation of the validation rows) about 0.36 ns a cell on 180k x 8 x 32 (2 ns before the kernels were vectorized
and the driver ran its partitions on threads), so they break even at about 2.4e8 cells idle; the default, 2e8,
stays below. Above it a cluster's parallel tasks pay back the jobs. With a local master (a classic session's
``local[...]``) Spark's executors share the driver's host and cores, so the driver's threads do the same work
without the jobs: ``auto`` then runs in the driver wherever the blocks fit its share of memory, whatever the cells
(measured at 1M x 32: a 10-class multinomial 8-rate epoch 0.83 s through Spark jobs; see the benchmark).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pipelines.distributed.blocks import BlockSet, PartitionBlocks, collect_arrays, map_partitions

Result = TypeVar("Result")

#: Share of ``spark.driver.memory`` the driver executor may fill with the collected blocks (Arrow batches in the
#: JVM, then the arrays in Python: about twice the blocks' size at the peak of the collection).
DRIVER_MEMORY_SHARE = 0.25

#: Share of ``spark.driver.maxResultSize`` the collected blocks may fill (their Arrow payload is a little larger
#: than the arrays: 0.5% at 4M rows x 32 inputs).
RESULT_SIZE_SHARE = 0.9


class PartitionExecutor(Protocol):
    """Maps a task function over the non-empty partitions' blocks (see the module docstring)."""

    @property
    def name(self) -> str:
        """``spark`` or ``driver``."""
        ...

    @property
    def n_features(self) -> int:
        """Model inputs of the blocks."""
        ...

    @property
    def train_rows(self) -> tuple[int, ...]:
        """Training rows per partition, indexed by partition number (empty partitions included)."""
        ...

    def map(self, compute: Callable[[PartitionBlocks], Result]) -> list[Result]:
        """``compute`` of every non-empty partition, in partition order."""
        ...


@dataclass(frozen=True)
class SparkExecutor:
    """One Spark job per call over the cached and staged blocks."""

    blocks: BlockSet
    name: str = "spark"

    @property
    def n_features(self) -> int:
        return self.blocks.n_features

    @property
    def train_rows(self) -> tuple[int, ...]:
        return self.blocks.train_rows

    def map(self, compute: Callable[[PartitionBlocks], Result]) -> list[Result]:
        return map_partitions(self.blocks, compute)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


@dataclass(frozen=True)
class DriverExecutor:
    """The task function called in this process over every non-empty partition's arrays, on up to ``threads``
    threads, the results in partition order.

    A task reads its partition's arrays and returns a value of its own, so the tasks share nothing but the
    read-only job: each result's bits are those of the partition run alone, and the caller combines them in
    partition order, as it combines a Spark job's."""

    partitions: tuple[PartitionBlocks, ...]  # the non-empty partitions, ascending partition number
    train_rows: tuple[int, ...]
    n_features: int
    threads: int = field(default_factory=available_cpus)
    name: str = "driver"

    @classmethod
    def collected(cls, blocks: BlockSet) -> DriverExecutor:
        """The blocks' arrays brought to the driver once (one collection of the cached blocks: classic and Spark
        Connect sessions alike, and whichever hosts the executors' staged copies are on)."""
        return cls(tuple(collect_arrays(blocks)), blocks.train_rows, blocks.n_features)

    @classmethod
    def in_memory(cls, partitions: Sequence[PartitionBlocks], num_partitions: int) -> DriverExecutor:
        """Blocks built in this process (tests: no Spark at all); partitions missing from ``partitions`` are
        empty."""
        ordered = tuple(sorted(partitions, key=lambda part: part.partition))
        if len({part.partition for part in ordered}) != len(ordered) or \
                any(not 0 <= part.partition < num_partitions for part in ordered):
            raise ValueError(f"partitions {[part.partition for part in ordered]} of {num_partitions}")
        rows = dict.fromkeys(range(num_partitions), 0)
        rows.update({part.partition: int(part.y_train.shape[0]) for part in ordered})
        widths = {int(part.X_train.shape[1]) for part in ordered} | {int(part.X_val.shape[1]) for part in ordered}
        if len(widths) != 1:
            raise ValueError(f"partitions of different widths {sorted(widths)}")
        return cls(ordered, tuple(rows[p] for p in range(num_partitions)), widths.pop())

    def map(self, compute: Callable[[PartitionBlocks], Result]) -> list[Result]:
        workers = min(self.threads, len(self.partitions))
        if workers <= 1:
            return [compute(part) for part in self.partitions]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lrsweep-partition") as pool:
            return list(pool.map(compute, self.partitions))  # a task's error is raised here, in partition order


@dataclass(frozen=True)
class DataSize:
    """What decides where the tasks run: the data's shape and the driver's room."""

    train_rows: int
    model_rows: int  # grid points x seeds trained at once
    inputs: int  # model inputs
    block_bytes: int  # the blocks' arrays (inputs, labels, weights), all partitions
    driver_limit_bytes: int  # the most bytes of blocks the driver may collect (default_driver_limit)
    local_master: bool = False  # a classic session whose master is local[...]: its executors share this host

    @property
    def cells(self) -> int:
        """Training rows x model rows x inputs: an epoch's multiply-adds per pass, up to a constant."""
        return self.train_rows * self.model_rows * self.inputs


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor to run and why (one line of the job's output)."""

    name: str  # "spark" | "driver"
    reason: str

    def line(self) -> str:
        return f"executor: {self.name} ({self.reason})"


def choose_executor(requested: str, size: DataSize, max_cells: int) -> ExecutorChoice:
    """``train.executor`` on data of ``size``: ``spark`` and ``driver`` are taken as asked (the caller has checked
    that a requested driver fits, :func:`driver_too_small`); ``auto`` runs in the driver when the blocks fit the
    driver's share of memory and either the master is local (its executors would use the same cores, plus a job
    per epoch) or ``size.cells <= max_cells``; else on Spark."""
    shape = (f"{size.train_rows:,} training rows x {size.model_rows:,} model rows x {size.inputs:,} inputs = "
             f"{size.cells:,} cells")
    if requested == "spark":
        return ExecutorChoice("spark", f"train.executor=spark; {shape}")
    if requested == "driver":
        return ExecutorChoice("driver", f"train.executor=driver; {shape}")
    if requested != "auto":
        raise ValueError(f"train.executor {requested!r}: one of auto, spark, driver")
    if size.block_bytes > size.driver_limit_bytes:
        return ExecutorChoice("spark", f"auto: blocks of {_size(size.block_bytes)} above the driver's "
                                       f"{_size(size.driver_limit_bytes)}")
    if size.local_master:
        return ExecutorChoice("driver", f"auto: {shape}; a local master's executors share this host's cores, so "
                                        "the driver's threads do the same work without a job per epoch")
    if size.cells > max_cells:
        return ExecutorChoice("spark", f"auto: {shape} above train.driver_max_cells={max_cells:,}; an epoch "
                                       "outweighs a Spark job's overhead")
    return ExecutorChoice("driver", f"auto: {shape} at most train.driver_max_cells={max_cells:,}; Spark jobs "
                                    "would cost more than the epochs")


def driver_too_small(block_bytes: int, limit_bytes: int) -> str | None:
    """Why blocks of ``block_bytes`` cannot be collected into the driver (None: they can)."""
    if block_bytes <= limit_bytes:
        return None
    return (f"train.executor=driver: the blocks would take about {_size(block_bytes)} in the driver, above its "
            f"limit of {_size(limit_bytes)} (train.driver_max_bytes, by default {DRIVER_MEMORY_SHARE:g} of "
            f"spark.driver.memory and at most {RESULT_SIZE_SHARE:g} of spark.driver.maxResultSize); use "
            "train.executor=auto or spark, or give the driver more memory")


def default_driver_limit(driver_memory: str, max_result_size: str) -> int:
    """The most bytes of blocks the driver executor collects by default: :data:`DRIVER_MEMORY_SHARE` of
    ``spark.driver.memory``, and at most :data:`RESULT_SIZE_SHARE` of ``spark.driver.maxResultSize`` (0: no limit),
    since the blocks come to the driver in one action whose results Spark refuses beyond it; a size Spark cannot
    read either is taken as its default, 1g."""
    def size(text: str) -> int:
        try:
            return jvm_bytes(text)
        except ValueError:
            return jvm_bytes("1g")

    limit = round(DRIVER_MEMORY_SHARE * size(driver_memory))
    results = size(max_result_size)
    return min(limit, round(RESULT_SIZE_SHARE * results)) if results > 0 else limit


def block_bytes_estimate(rows: int, dense_width: int, sparse_columns: int, itemsize: int, weighted: bool) -> int:
    """Bytes of the blocks of ``rows`` rows: dense inputs, one CSR entry per sparse column (value and index) and
    row pointer, labels and weights."""
    per_row = dense_width * itemsize + 8 + (8 if weighted else 0) + (sparse_columns * 12 + 8 if sparse_columns else 0)
    return rows * per_row


def jvm_bytes(size: str) -> int:
    """A JVM memory size (``spark.driver.memory``: ``1g``, ``512m``, ``2048k``, bare numbers are MiB) in bytes."""
    text = size.strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * 2**20)


def _size(size: int) -> str:
    """``12.3 MiB``, ``980 B``: bytes in the largest binary unit that keeps a number >= 1."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"
