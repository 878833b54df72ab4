"""A sweep's inputs, each step returning a frozen value: MLflow reached, the checkpoint restored, the table
pinned, the blocks prepared, and the data facts every later step reads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from pipelines.config import Config, DataConfig, TrainConfig
from pipelines.errors import ConfigError
from pipelines.lakehouse.checkpoints import CheckpointStore
from pipelines.lakehouse.reader import FeatureTable, read_feature_table
from pipelines.lakehouse.writer import check_results_table
from pipelines.orchestration.champion import Champion
from pipelines.orchestration.recorder import DataFacts
from pipelines.orchestration.training import PreparedData, batch_size, model_rows, prepare_data
from pipelines.reporting.progress import features_detail, features_summary
from pipelines.sgd.kernels import batches_per_epoch
from pipelines.stopwatch import Stopwatch
from pipelines.sweep.checkpoint import SweepCheckpoint, settings_changes
from pipelines.tracking.runs import SweepTracker
from pipelines.tracking.store import TrackingStore

Say = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tracking:
    """MLflow as this attempt reaches it: the store, the sweep's runs (an earlier attempt's, if any) and the
    pinned champion of ``tracking.registered_model``."""

    store: TrackingStore
    tracker: SweepTracker
    champion: Champion


def connect_tracking(store: TrackingStore, sweep_id: str, config: Config, say: Say) -> Tracking:
    """The sweep's runs and champion on a reached ``store``."""
    tracker = SweepTracker(store, sweep_id)
    return Tracking(store, tracker, Champion(tracker, config, say))


def restore_checkpoint(checkpoints: CheckpointStore, sweep_id: str, settings: dict[str, Any], may_train: bool,
                       say: Say) -> SweepCheckpoint | None:
    """The newest readable checkpoint of this sweep id, after checking it was made with these settings (and
    that the checkpoint location can be written: a sweep that trains must be able to save)."""
    if may_train:
        checkpoints.check_writable(sweep_id)
    for stored in checkpoints.latest(sweep_id):
        try:
            if isinstance(stored, str):
                raise ValueError("not a readable checkpoint file")
            checkpoint = SweepCheckpoint.from_arrays(stored.arrays)
        except (ValueError, KeyError) as error:
            say(f"warning: checkpoint {stored if isinstance(stored, str) else stored.path} cannot be read "
                f"({error}); trying the one before")
            continue
        changes = settings_changes(checkpoint.settings, settings)
        if changes:
            raise ConfigError(f"sweep.id {sweep_id!r} was started with other settings ("
                              + "; ".join(changes[:6]) + "); rerun with the original settings to complete it, "
                              "or use a new sweep.id")
        if not may_train and not checkpoint.complete:
            raise ConfigError(f"sweep.id {sweep_id!r}: its training is not finished (checkpoint at epoch "
                              f"{checkpoint.epoch}); nothing to sync: rerun the sweep job to resume it")
        return checkpoint
    if not may_train:
        raise ConfigError(f"sweep.id {sweep_id!r}: no checkpoint under {checkpoints.root}; "
                          "nothing to sync (run the sweep job to train it)")
    return None


def pin_table(spark: SparkSession, config: Config, sweep_id: str, checkpoint: SweepCheckpoint | None,
              tracking: Tracking, phases: Stopwatch, say: Say) -> FeatureTable:
    """Read the table at the version the first attempt pinned (or the configured/latest one), check the results
    table, and say what the sweep trains on."""
    data = config.data
    recorded = (checkpoint.table_version if checkpoint is not None
                else _int_or_none(tracking.tracker.recorded_param("table_version")))
    if recorded is not None and data.version is None:
        data = data.model_copy(update={"version": recorded})
    if data.since_version is not None:
        data = data.model_copy(update={"since_version": since_version(data, tracking)})
    table = read_feature_table(spark, data, config.model.loss, steps=phases)
    check_results_table(spark, config.output.results_table)
    penalties = len(config.penalty_axis())
    rates = ("auto rates" if config.sweep.learning_rates == "auto" else f"{len(config.sweep.grid())} rates") + \
        (f" x {penalties} penalties" if penalties > 1 else "")
    resumed = f" (resumed from epoch {checkpoint.epoch})" if checkpoint is not None else ""
    say(f"sweep {sweep_id}{resumed}: {table.ref.identifier} at {table.ref.describe()}, "
        f"{table.rows} rows, {len(table.features)} features, {rates}")
    if table.dropped_summary():
        say(f"data: {table.dropped_summary()} (data.on_null / data.on_invalid)")
    return table


def since_version(data: DataConfig, tracking: Tracking) -> int | None:
    """``data.since_version`` as a number (None: the whole version); ``champion`` is the version the pinned
    champion was trained on. A rerun reads the range its first attempt pinned."""
    recorded = tracking.tracker.recorded_param("since_version")
    if recorded is not None:
        return None if recorded == "none" else int(recorded)
    if isinstance(data.since_version, int):
        return data.since_version
    return tracking.champion.since_version(data.table)


def prepare(spark: SparkSession, table: FeatureTable, config: Config, checkpoint: SweepCheckpoint | None,
            phases: Stopwatch, say: Say) -> PreparedData:
    """The cached training blocks (a resumed sweep keeps its recorded partitioning), and what the job says
    about them: notes, classes, the features counted by family (each column's encoding with ``--verbose``), where
    the engine's tasks run, a small table's batch size."""
    partitions = checkpoint.num_partitions if checkpoint is not None else None
    prepared = prepare_data(spark, table, config.data, config.features, config.train, config.model.class_weight,
                            num_partitions=partitions,
                            model_rows=model_rows(config.sweep, len(config.penalty_axis())), steps=phases)
    encoding = prepared.encoding
    for note in prepared.notes:
        say(f"data: {note}")
    classes = prepared.classes
    if classes is not None:
        more = ", ..." if len(classes) > 20 else ""
        say(f"classes: {len(classes)} ({', '.join(repr(c) for c in classes[:20])}{more})")
    for line in features_summary(table.columns, encoding):
        say(line)
    log.info(features_detail(encoding))  # --verbose (and the parent run's features.json)
    say(prepared.executor_choice.line())
    effective, train, blocks = effective_batch_size(config.train, prepared), config.train, prepared.blocks
    if effective is not None:
        say(f"small table: train.batch_size={train.batch_size} gives "
            f"{batches_per_epoch(max(blocks.train_rows), train.batch_size)} step(s) per epoch on the "
            f"largest partition's {max(blocks.train_rows)} training rows; using batch size "
            f"{effective} for at least train.min_steps_per_epoch={train.min_steps_per_epoch} steps")
    return prepared


def effective_batch_size(train: TrainConfig, prepared: PreparedData | None) -> int | None:
    """local_sgd's batch size when a small table makes it smaller than ``train.batch_size``, else None."""
    if prepared is None or train.algorithm != "local_sgd":
        return None
    effective = batch_size(train, prepared.blocks)
    return None if effective == train.batch_size else effective


def data_facts(table: FeatureTable, prepared: PreparedData | None, checkpoint: SweepCheckpoint | None) -> DataFacts:
    """The pinned data's facts: from the prepared blocks, or from the checkpoint when none were built."""
    if prepared is not None:
        blocks = prepared.blocks
        return DataFacts(table, blocks.num_partitions, blocks.total_train_rows, blocks.total_val_rows,
                         prepared.encoding, prepared.classes)
    assert checkpoint is not None, "a sweep without a checkpoint prepares its blocks"
    return DataFacts(table, checkpoint.num_partitions, checkpoint.train_rows, checkpoint.validation_rows,
                     checkpoint.encoding, checkpoint.classes)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None
