"""Grid policies: divergence, early stopping, successive halving (pure, no Spark)."""

from __future__ import annotations

import numpy as np

from pipelines.sweep.policies import EarlyStopping, SuccessiveHalving, diverged


def test_divergence_flags_non_finite_and_factor_times_best() -> None:
    best = np.array([1.0, 1.0, 1.0, 1.0])
    flagged = diverged(np.array([3.9, 4.1, np.nan, np.inf]), best, factor=4.0)
    assert flagged.tolist() == [False, True, True, True]


def test_early_stopping_waits_patience_epochs_and_remembers_best_epoch() -> None:
    stopping = EarlyStopping(n_rates=2, patience=2, min_delta=0.01)
    rates = np.array([0, 1])
    improved, stop = stopping.update(1, rates, np.array([1.0, 1.0]))
    assert improved.tolist() == [0, 1] and stop.size == 0
    improved, stop = stopping.update(2, rates, np.array([0.5, 0.995]))  # rate 1: less than min_delta better
    assert improved.tolist() == [0] and stop.size == 0
    improved, stop = stopping.update(3, rates, np.array([0.6, 0.9]))
    assert improved.tolist() == [1] and stop.size == 0
    improved, stop = stopping.update(4, rates, np.array([0.7, 0.95]))
    assert improved.size == 0 and stop.tolist() == [0]  # two epochs without improvement since epoch 2
    assert stopping.best_epoch.tolist() == [2, 3]


def test_halving_rungs_are_geometric() -> None:
    halving = SuccessiveHalving(min_epochs=2, eta=3)
    assert [e for e in range(1, 30) if halving.is_rung(e)] == [2, 6, 18]


def test_halving_keeps_exactly_the_best_third_with_deterministic_ties() -> None:
    halving = SuccessiveHalving(min_epochs=1, eta=3)
    rates = np.arange(8)
    losses = np.array([0.9, 0.5, 0.4, np.nan, 0.45, 0.8, 0.4, 2.0])
    pruned = halving.prune(1, rates, losses)
    kept = sorted(set(rates.tolist()) - set(pruned.tolist()))
    assert kept == [2, 4, 6]  # ceil(8/3) = 3 best; the tie 0.4 (rates 2 and 6) is kept whole; NaN is last
    assert halving.prune(2, rates, losses).size == 0  # not a rung
    assert halving.prune(3, np.array([2, 4, 6]), np.array([0.3, 0.2, 0.1])).tolist() == [2, 4]
