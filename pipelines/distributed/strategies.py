"""The two training algorithms, each one object with the same interface: ``local_sgd`` and ``gd``.

A strategy answers what the engine's epoch loop (:class:`~pipelines.distributed.engine.GridTrainer`) asks:

* how many optimizer steps an epoch is (:meth:`Strategy.steps_per_epoch`) and where an epoch synchronizes
  (:meth:`Strategy.sync_ranges`);
* what a task does with its partition (:meth:`Strategy.train_partition`, on an executor) and what the
  driver makes of the partitions' results (:meth:`Strategy.combine`), with typed payloads;
* how many row passes a job costs (:meth:`Strategy.row_passes`).

``local_sgd``
    Each partition runs shuffled mini-batch SGD over its training rows
    (:func:`~pipelines.sgd.kernels.minibatch_epoch`) from the current models; the driver averages the
    resulting models weighted by the partitions' training rows (``W <- sum_p n_p W_p / sum_p n_p``) after
    every epoch or every ``sync_every`` local steps. Optimizer state is averaged the same way
    (``sync_state: average``) or zeroed (``reset``); the step counter keeps counting either way (the
    largest partition's), so schedules continue. With ``train_loss: progressive`` each partition also sums its
    batches' losses at the margins of their updates, and the driver adds the partitions' sums (the epoch's
    progressive training loss, without a pass of its own).
``gd``
    Synchronous gradient descent, one step per epoch: every partition returns
    :class:`~pipelines.sgd.gradient_step.GradientSums` at the current models (optionally over a Bernoulli
    sample of ``batch_fraction`` of its rows); the driver adds them in partition order and takes one
    :func:`~pipelines.sgd.gradient_step.gradient_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from pipelines.distributed.blocks import PartitionBlocks
from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd.averaging import weighted_mean
from pipelines.sgd.design import Design
from pipelines.sgd.gradient_step import GradientSums, gradient_step
from pipelines.sgd.kernels import Block, EpochPlan, Kernel, Models, batches_per_epoch, minibatch_epoch
from pipelines.sgd.optimizers import OptimizerState
from pipelines.sgd.problem import TrainingProblem
from pipelines.sgd.regularization import Penalties
from pipelines.sgd.schedules import StepSchedule

#: Offset between the shuffle seeds of consecutive partitions (partition 0 uses the seed itself, so a
#: one-partition run equals the single-process reference).
PARTITION_SEED_STRIDE = 7919


@dataclass(frozen=True)
class TrainJob:
    """What a training job's tasks need besides their partition (captured by the task closure)."""

    problem: TrainingProblem
    schedule: StepSchedule
    total_steps: int
    epoch: int  # 1-based
    weights: FloatArray  # (R, d) the trained rows' current models
    intercepts: FloatArray  # (R,)
    state: OptimizerState  # of the R rows
    step_rates: FloatArray  # (R,) base rate x per-row multiplier
    seeds: IntArray  # (R,) shuffle seed of each row
    penalties: Penalties  # of the R rows
    batch_range: tuple[int, int] | None  # local_sgd: the synchronization interval of this job


@dataclass(frozen=True)
class LocalModels:
    """A partition's models after its local mini-batch steps (local_sgd's task payload)."""

    weights: FloatArray  # (R, d)
    intercepts: FloatArray  # (R,)
    state: OptimizerState
    steps: int
    loss_sums: FloatArray | None = None  # (R / outputs,) progressive loss sums of its batches, per model


@dataclass(frozen=True)
class TrainedRows:
    """The trained rows' new models and optimizer state, as the driver combined them."""

    weights: FloatArray  # (R, d)
    intercepts: FloatArray  # (R,)
    state: OptimizerState
    loss_sums: FloatArray | None = None  # (R / outputs,) the partitions' progressive loss sums, added


class Strategy(Protocol):
    """One training algorithm (see the module docstring)."""

    @property
    def name(self) -> str:
        """``local_sgd`` or ``gd``."""
        ...

    @property
    def train_loss(self) -> Literal["progressive", "exact"]:
        """What an evaluation's training loss is. ``progressive``: the training payloads carry the loss sums of
        the job's batches, each at the margins its update is computed from (:attr:`LocalModels.loss_sums`), which
        over an epoch are the training loss of the models it produces (the initial models' takes a pass);
        ``exact``: a pass over the training rows at the evaluated models (or gd's gradient pass). Either way plus
        the evaluated models' penalty."""
        ...

    def steps_per_epoch(self, train_rows: Sequence[int]) -> int:
        """Optimizer steps a model row takes per epoch, given each partition's training rows."""
        ...

    def sync_ranges(self, steps_per_epoch: int) -> list[tuple[int, int] | None]:
        """The batch ranges of an epoch's jobs (``[None]``: one job for the whole epoch)."""
        ...

    def train_partition(self, job: TrainJob, blocks: PartitionBlocks, kernel: Kernel) -> LocalModels | GradientSums:
        """On an executor: the partition's contribution to one job, computed by ``kernel`` (the problem's, for the
        partition's blocks)."""
        ...

    def combine(self, job: TrainJob, parts: Sequence[tuple[int, LocalModels | GradientSums]]) -> TrainedRows:
        """On the driver: the new models from ``(training rows, payload)`` of every non-empty partition,
        in partition order."""
        ...

    def row_passes(self, total_train_rows: int, num_partitions: int, batch_range: tuple[int, int] | None) -> float:
        """Training rows one model row passes over in one job."""
        ...

    def training_loss_is_exact(self) -> bool:
        """True when the training payload's loss sums are the full training loss at the job's models."""
        ...


def every_row(rows: IntArray, n_rows: int) -> bool:
    """Whether ``rows`` are all ``n_rows`` rows, in order."""
    return rows.size == n_rows and np.array_equal(rows, np.arange(n_rows))


def rows_of(array: FloatArray, rows: IntArray) -> FloatArray:
    """``array[rows]``, read-only; where ``rows`` are all of its rows in order (the usual epoch: every point still
    running, one seed), a view instead of a copy, so a wide model (2^18 hashed inputs x the grid) is not copied at
    each step of the epoch. The engine's model arrays are never written in place (each update makes new ones), and
    the result refuses writes; read-only either way, so the compiled kernels see one array type (numba compiles a
    read-only array as a type of its own)."""
    taken: FloatArray = array.view() if every_row(rows, array.shape[0]) else array[rows]
    taken.flags.writeable = False
    return taken


@dataclass(frozen=True)
class LocalSGD:
    """Mini-batch SGD per partition, models averaged at synchronization points."""

    batch_size: int = 256
    sync_every: int | None = None
    sync_state: str = "average"  # "average" | "reset"
    train_loss: Literal["progressive", "exact"] = "progressive"
    name: str = "local_sgd"

    def steps_per_epoch(self, train_rows: Sequence[int]) -> int:
        return max(1, batches_per_epoch(max(train_rows), self.batch_size))

    def sync_ranges(self, steps_per_epoch: int) -> list[tuple[int, int] | None]:
        if self.sync_every and self.sync_every < steps_per_epoch:
            return [(start, start + self.sync_every) for start in range(0, steps_per_epoch, self.sync_every)]
        return [None]

    def train_partition(self, job: TrainJob, blocks: PartitionBlocks, kernel: Kernel) -> LocalModels:
        """Rows with different seeds get their own row order (one pass per seed)."""
        block = Block(blocks.X_train, blocks.y_train, blocks.w_train)
        seeds = np.unique(job.seeds)
        one_seed = seeds.size == 1  # the epoch's models are the kernel's: nothing to assemble
        new_weights, new_intercepts = (job.weights, job.intercepts) if one_seed else \
            (job.weights.copy(), job.intercepts.copy())
        slots: dict[str, npt.NDArray[np.generic]] = {} if one_seed else \
            {k: v.copy() for k, v in job.state.to_arrays().items()}
        outputs = job.problem.outputs
        progressive = self.train_loss == "progressive"
        loss_sums = np.zeros(job.weights.shape[0] // outputs) if progressive else None
        steps = 0
        for seed in seeds:
            group = np.flatnonzero(job.seeds == seed)
            plan = EpochPlan(kernel, job.step_rates[group], job.penalties.select(group), job.schedule,
                             job.total_steps, self.batch_size, int(seed) + PARTITION_SEED_STRIDE * blocks.partition,
                             job.epoch - 1, job.problem.fit_intercept, job.batch_range, progressive)
            trained, steps = minibatch_epoch(
                block, Models(rows_of(job.weights, group), rows_of(job.intercepts, group), job.state.select(group)),
                plan)
            if one_seed:
                new_weights, new_intercepts = trained.weights, trained.intercepts
                slots = dict(trained.state.to_arrays())
            else:
                new_weights[group], new_intercepts[group] = trained.weights, trained.intercepts
                for key, value in trained.state.to_arrays().items():
                    slots[key][group] = value
            if loss_sums is not None and trained.loss_sums is not None:
                loss_sums[group[::outputs] // outputs] = trained.loss_sums  # a model's rows share its seed
        return LocalModels(new_weights, new_intercepts, OptimizerState.from_arrays(slots), steps, loss_sums)

    def combine(self, job: TrainJob, parts: Sequence[tuple[int, LocalModels | GradientSums]]) -> TrainedRows:
        models = [(rows, part) for rows, part in parts if isinstance(part, LocalModels)]
        counts = [float(rows) for rows, _ in models]
        weights = weighted_mean([part.weights for _, part in models], counts)
        intercepts = weighted_mean([part.intercepts for _, part in models], counts)
        slots: dict[str, npt.NDArray[np.generic]] = {}
        for key in models[0][1].state.to_arrays():
            arrays = [part.state.to_arrays()[key] for _, part in models]
            if key == "step":
                slots[key] = np.max(np.stack(arrays), axis=0)
            elif self.sync_state == "reset":
                slots[key] = np.zeros_like(arrays[0], dtype=np.float64)
            else:
                slots[key] = weighted_mean(arrays, counts)
        return TrainedRows(weights, intercepts, OptimizerState.from_arrays(slots), _added_loss_sums(models))

    def row_passes(self, total_train_rows: int, num_partitions: int, batch_range: tuple[int, int] | None) -> float:
        if batch_range is None:
            return float(total_train_rows)
        return float(min(total_train_rows, (batch_range[1] - batch_range[0]) * self.batch_size * num_partitions))

    def training_loss_is_exact(self) -> bool:
        return False


@dataclass(frozen=True)
class GradientDescent:
    """Full-batch (or ``batch_fraction``-sampled) gradient descent, one step per epoch."""

    batch_fraction: float = 1.0
    name: str = "gd"

    @property
    def train_loss(self) -> Literal["exact"]:
        """Exact: the gradient pass at the epoch's models gives it (no pass of its own at ``batch_fraction``
        1)."""
        return "exact"

    def steps_per_epoch(self, train_rows: Sequence[int]) -> int:
        return 1

    def sync_ranges(self, steps_per_epoch: int) -> list[tuple[int, int] | None]:
        return [None]

    def train_partition(self, job: TrainJob, blocks: PartitionBlocks, kernel: Kernel) -> GradientSums:
        X, y, w = sample_rows(blocks.X_train, blocks.y_train, blocks.w_train, self.batch_fraction,
                              int(job.seeds[0]), job.epoch, blocks.partition)
        return GradientSums.of_block(kernel, Block(X, y, w), job.weights, job.intercepts)

    def combine(self, job: TrainJob, parts: Sequence[tuple[int, LocalModels | GradientSums]]) -> TrainedRows:
        sums = GradientSums.total([part for _, part in parts if isinstance(part, GradientSums)])
        state = job.state.copy()
        if sums.count == 0:
            return TrainedRows(job.weights, job.intercepts, state)
        step = gradient_step(sums, job.weights, job.intercepts, state, problem=job.problem,
                             learning_rates=job.step_rates, schedule=job.schedule, total_steps=job.total_steps,
                             penalties=job.penalties)
        return TrainedRows(step.weights, step.intercepts, state)

    def row_passes(self, total_train_rows: int, num_partitions: int, batch_range: tuple[int, int] | None) -> float:
        return self.batch_fraction * total_train_rows

    def training_loss_is_exact(self) -> bool:
        return self.batch_fraction >= 1.0


def _added_loss_sums(models: Sequence[tuple[int, LocalModels]]) -> FloatArray | None:
    """The partitions' progressive loss sums added in partition order; None when they carry none."""
    sums = [part.loss_sums for _, part in models if part.loss_sums is not None]
    if not sums:
        return None
    total = sums[0].copy()
    for part_sums in sums[1:]:
        total += part_sums
    return total


def sample_rows(X: Design, y: FloatArray, w: FloatArray | None, fraction: float, seed: int, step: int,
                partition: int) -> tuple[Design, FloatArray, FloatArray | None]:
    """A Bernoulli(``fraction``) sample of the rows (and their weights), seeded by (seed, step, partition)."""
    if fraction >= 1.0:
        return X, y, w
    keep = np.random.default_rng([seed, step, partition]).random(y.shape[0]) < fraction
    return X[keep], y[keep], None if w is None else w[keep]
