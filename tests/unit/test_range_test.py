"""The pure range-test math: rates, smoothing, the stop rule, the suggestion rule, auto grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sweep.range_test import (
    LossSmoother,
    auto_grid,
    range_test_rates,
    refine_span,
    run_range_test,
    should_stop,
    smooth_losses,
    suggest_learning_rate,
)


def test_rates_grow_exponentially_between_the_bounds() -> None:
    rates = range_test_rates(1e-6, 10.0, 100)
    assert rates.shape == (100,) and rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(rates[1:] / rates[:-1], (1e7) ** (1 / 99), rtol=1e-12)
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        range_test_rates(1.0, 1.0, 10)


def test_smoothing_is_the_bias_corrected_moving_average() -> None:
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 2.0, 40)
    beta = 0.9
    average, expected = 0.0, []
    for t, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        expected.append(average / (1 - beta ** (t + 1)))
    np.testing.assert_allclose(smooth_losses(losses, beta), expected, rtol=1e-14)
    # bias correction: a constant loss is its own average from the first step; smoothing 0 is the identity
    np.testing.assert_allclose(smooth_losses(np.full(5, 0.7), 0.98), 0.7, rtol=1e-14)
    np.testing.assert_array_equal(smooth_losses(losses, 0.0), losses)
    smoother = LossSmoother(0.5)
    assert [smoother.update(x) for x in (1.0, 3.0)] == pytest.approx([0.5 / 0.5, (0.25 + 1.5) / 0.75])


def test_stop_rule() -> None:
    assert not should_stop(3.9, 1.0, 4.0)
    assert should_stop(4.1, 1.0, 4.0)
    assert should_stop(math.nan, 1.0, 4.0) and should_stop(math.inf, 1.0, 4.0)


def _curve(rates: np.ndarray, best_rate: float) -> np.ndarray:
    """A range-test-like curve: flat, falls until ``best_rate``, then explodes."""
    x = np.log10(rates / best_rate)
    return np.where(x < 0, 1.0 - 0.8 / (1 + np.exp(-3 * (x + 1.5))), 0.2 + 5 * x**2 * 10**x)


def test_run_stops_after_the_first_diverging_step_and_suggests_a_tenth_of_the_minimum() -> None:
    rates = range_test_rates(1e-5, 100.0, 120)
    curve = dict(zip(rates.tolist(), _curve(rates, 0.3).tolist(), strict=True))
    calls: list[float] = []

    def step(rate: float) -> float:
        calls.append(rate)
        return curve[rate]

    result = run_range_test(step, rates, smoothing=0.0, stop_factor=4.0)
    assert result.stopped_early and result.steps == len(calls) < 120
    assert result.smoothed_losses[-1] > 4 * np.min(result.smoothed_losses[:-1])  # the last step fired the rule
    assert np.all(result.smoothed_losses[:-1] <= 4 * np.minimum.accumulate(result.smoothed_losses[:-1]))
    assert result.min_loss_rate == pytest.approx(0.3, rel=0.1)
    assert result.suggestion == pytest.approx(result.min_loss_rate / 10)
    # with smoothing the curve lags: the minimum moves right, the stop comes later
    smoothed = run_range_test(step, rates, smoothing=0.9, stop_factor=4.0)
    assert smoothed.steps > result.steps and smoothed.min_loss_rate >= result.min_loss_rate


def test_a_non_finite_loss_stops_the_run_and_is_ignored_by_the_suggestion() -> None:
    losses = iter([1.0, 0.8, 0.5, 0.4, math.inf, 0.1])
    result = run_range_test(lambda rate: next(losses), [1, 2, 3, 4, 5, 6], smoothing=0.0, stop_factor=4.0)
    assert result.steps == 5 and result.stopped_early
    assert result.suggestion == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no finite"):
        suggest_learning_rate([1.0, 2.0], [math.nan, math.inf])


def test_no_divergence_runs_every_step_and_picks_the_last_minimum() -> None:
    result = run_range_test(lambda rate: 1.0 / rate, range_test_rates(0.01, 1.0, 20), 0.5, 4.0)
    assert result.steps == 20 and not result.stopped_early
    assert result.suggestion == pytest.approx(0.1)


def test_numpy_quadratic_suggestion_is_near_the_optimal_rate() -> None:
    # f(w) = curvature/2 * |w - 1|^2: gradient descent is fastest at 1 / curvature, diverges above 2 / curvature
    curvature = 4.0
    w = np.zeros(3)

    def step(rate: float) -> float:
        nonlocal w
        loss = 0.5 * curvature * float(np.sum((w - 1) ** 2))
        w = w - rate * curvature * (w - 1)
        return loss

    result = run_range_test(step, range_test_rates(1e-4, 10.0, 100), 0.9, 4.0)
    assert result.stopped_early
    assert 2 / curvature <= result.min_loss_rate <= 16 / curvature  # past the edge: the smoothing lags
    assert 1 / 3 <= result.suggestion * curvature <= 3


def test_auto_grid_is_centred_on_the_suggestion_and_refining_spans_two_steps() -> None:
    grid = auto_grid(0.1, 5, 10.0)
    assert len(grid) == 5 and grid == sorted(grid)
    assert grid[0] == pytest.approx(0.1 / math.sqrt(10)) and grid[-1] == pytest.approx(0.1 * math.sqrt(10))
    assert grid[2] == pytest.approx(0.1) and auto_grid(0.3, 1, 10.0) == [0.3]
    span = refine_span(grid)
    assert span == pytest.approx(math.sqrt(10))  # neighbours of the best are 10**0.25 apart on either side
    finer = auto_grid(grid[3], 5, span)
    assert finer[0] == pytest.approx(grid[2]) and finer[-1] == pytest.approx(grid[4])
    with pytest.raises(ValueError):
        auto_grid(0.0, 5, 10.0)


def test_job_rejects_bad_settings_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import range_test
    from pipelines.cli import run_job

    assert run_job(range_test.main, ["--set", "range_test.max_lr=1e-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: conf: range_test") and "must be > min_lr" in err


def test_old_job_name_says_it_is_deprecated_then_runs_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import lr_finder
    from pipelines.cli import run_job

    assert run_job(lr_finder.main, ["--set", "range_test.max_lr=1e-9"]) == 2
    deprecation, error = capsys.readouterr().err.strip().split("\n")
    assert deprecation == ("jobs/lr_finder.py is deprecated: use jobs/range_test.py (make range-test); "
                           "it will be removed in the next release")
    assert error.startswith("error: conf: range_test") and "must be > min_lr" in error
