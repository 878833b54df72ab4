"""Checkpoints without Spark: the grid state round-trips bit for bit, files are written atomically and read
newest first, a damaged newest file falls back to the one before, old ones are pruned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.distributed.engine import ModelRows
from pipelines.features.encoding import ColumnEncoding, TableEncoding
from pipelines.lakehouse.checkpoints import CheckpointStore, decode_arrays, encode_arrays
from pipelines.sgd.optimizers import OptimizerSpec
from pipelines.sweep.checkpoint import RoundCheckpoint, SweepCheckpoint, settings_changes
from pipelines.sweep.grid import GridPoint, row_penalties
from pipelines.sweep.policies import AdaptiveRate, Divergence, EarlyStopping, Policies
from pipelines.sweep.range_test import RangeTestResult
from pipelines.sweep.snapshot import GridSnapshot
from pipelines.sweep.state import grid_state
from pipelines.sweep.status import DIVERGED

POINTS = (GridPoint(0.01), GridPoint(0.1, 0.5, 0.25), GridPoint(1.0, 1e-3))


class _Trainer:
    """What GridSnapshot reads of a trainer: its model rows and counters."""

    def __init__(self, models: ModelRows) -> None:
        self.models, self.jobs, self.row_passes = models, 7, 12345


def _snapshot() -> tuple[GridSnapshot, Policies]:
    rng = np.random.default_rng(3)
    state = grid_state(POINTS, [1, 2], epochs=4, loss="logistic", n_features=5)
    for curve in state.curves.values():
        curve[:3] = rng.normal(size=curve[:3].shape)
    state.status[2], state.stopped_epoch[2], state.kept_epoch[:] = DIVERGED, 2, [2, 2, 1]
    state.kept_weights[:] = rng.normal(size=state.kept_weights.shape)
    state.recorded_epoch, state.trained_epoch, state.epoch_seconds = 2, 3, [0.5, 0.25, 0.125]
    models = ModelRows.zeros([0.01, 0.01, 0.1, 0.1, 1.0, 1.0], [1, 2] * 3, row_penalties(POINTS, 2), 5,
                             OptimizerSpec("adam"))
    models.weights = rng.normal(size=models.weights.shape)
    models.state.weight_slots["exp_avg"][:] = rng.normal(size=(6, 5))
    models.state.step[:] = 17
    policies = Policies(Divergence(3, 4.0), EarlyStopping(3, 2, 0.01), adaptive=AdaptiveRate(6, 2, 1e-4))
    policies.divergence.best_train_loss[:] = [0.5, 0.4, 0.7]
    policies.adaptive.state.multipliers[1] = 0.2  # type: ignore[union-attr]
    return GridSnapshot.capture(state, _Trainer(models), policies), policies  # type: ignore[arg-type]


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


def test_sweep_checkpoint_round_trips_through_npz_bit_for_bit() -> None:
    snapshot, _ = _snapshot()
    encoding = TableEncoding([ColumnEncoding("a", "number", 1, means=(0.1,), scales=(2.0 / 3.0,)),
                              ColumnEncoding("plan", "onehot", 3, categories=("gold", None)),
                              ColumnEncoding("city", "hashed", 64, buckets=64),
                              ColumnEncoding("emb", "array", 2, means=(1e-300, -5.5), scales=(np.pi, 1.0)),
                              ColumnEncoding("v", "vector", 50)])
    result = RangeTestResult(np.geomspace(1e-4, 1, 5), np.array([0.7, 0.6, 0.5, np.inf, np.nan]),
                             np.array([0.7, 0.65, 0.6, np.nan, np.nan]), True, 0.001)
    checkpoint = SweepCheckpoint("s-1", {"train": {"epochs": 4}}, "/t", 3, 4, 900, 100, encoding,
                                 (RoundCheckpoint(1, POINTS, snapshot),), result, complete=False)
    restored = SweepCheckpoint.from_arrays(decode_arrays(encode_arrays(checkpoint.to_arrays())))
    assert (restored.sweep_id, restored.table_version, restored.num_partitions, restored.epoch) == ("s-1", 3, 4, 2)
    assert restored.encoding == encoding and restored.encoding.means.tobytes() == encoding.means.tobytes()
    assert restored.range_test is not None and restored.range_test.suggestion == 0.001
    np.testing.assert_array_equal(restored.range_test.losses, result.losses)
    [round_checkpoint] = restored.rounds
    assert round_checkpoint.points == POINTS
    _assert_same(round_checkpoint.snapshot.to_arrays(), snapshot.to_arrays())


def test_snapshot_restores_state_models_and_policies_exactly() -> None:
    snapshot, policies = _snapshot()
    state = grid_state(POINTS, [1, 2], epochs=4, loss="logistic", n_features=5)
    trainer = _Trainer(ModelRows.zeros([0.01] * 6, [1] * 6, row_penalties(POINTS, 2), 5, OptimizerSpec("adam")))
    fresh = Policies(Divergence(3, 4.0), EarlyStopping(3, 2, 0.01), adaptive=AdaptiveRate(6, 2, 1e-4))
    snapshot.restore(trainer, state, fresh)  # type: ignore[arg-type]
    _assert_same(state.to_arrays(), snapshot.state)
    _assert_same(trainer.models.to_arrays(), snapshot.models)
    _assert_same(fresh.to_arrays(), policies.to_arrays())
    assert (trainer.jobs, trainer.row_passes) == (7, 12345)
    other = grid_state([GridPoint(0.01), GridPoint(0.1, 0.5), GridPoint(1.0, 1e-3)], [1, 2], epochs=4, loss="logistic",
                       n_features=5)
    with pytest.raises(ValueError, match="another grid"):
        snapshot.restore(trainer, other, fresh)  # type: ignore[arg-type]


def test_store_writes_atomically_reads_newest_first_skips_damage_and_prunes(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    assert list(store.latest("s")) == []
    for value in range(3):
        stored = store.write("s", {"value": np.array([value])})
        assert stored.sequence == value + 1
    assert not list((tmp_path / "checkpoints" / "s").glob(".*.tmp"))  # no scratch files left behind
    newest = (tmp_path / "checkpoints" / "s" / "checkpoint-00000003.npz")
    newest.write_bytes(newest.read_bytes()[:40])  # a torn write
    found = list(store.latest("s"))
    assert found[0] == str(newest) and [c.arrays["value"][0] for c in found[1:]] == [1, 0]  # type: ignore[union-attr]
    assert store.prune("s", keep=1) == 2 and [s for s, _ in store.sequences("s")] == [3]
    assert store.write("s", {"value": np.array([9])}).sequence == 4  # never reuses a sequence number


def test_settings_changes_name_each_changed_key() -> None:
    recorded = {"train": {"epochs": 10, "schedule": {"name": "constant"}}, "sweep": {"seeds": None}}
    current = {"train": {"epochs": 12, "schedule": {"name": "cosine"}}, "sweep": {"seeds": None}}
    assert settings_changes(recorded, current) == ["train.epochs was 10, now 12",
                                                   "train.schedule.name was 'constant', now 'cosine'"]
    assert settings_changes(recorded, recorded) == []
