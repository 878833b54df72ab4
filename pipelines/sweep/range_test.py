"""Smith's learning-rate range test, the pure part: rates, smoothing, stopping, the suggestion, auto grids.

One model is trained from zero while its rate grows exponentially, one mini-batch step per rate::

    rate_t = min_lr * (max_lr / min_lr) ** (t / (num_steps - 1)),   t = 0 .. num_steps - 1

``loss_t`` is the mini-batch training objective at the weights *before* step ``t`` (the loss the step's
gradient comes from). It is smoothed with a bias-corrected exponential moving average (fastai's
``LRFinder``)::

    average_t = beta * average_{t-1} + (1 - beta) * loss_t,     average_{-1} = 0
    smoothed_t = average_t / (1 - beta ** (t + 1))

and the test stops after the first step whose ``smoothed_t`` is not finite or exceeds
``stop_factor * min(smoothed_0 .. smoothed_{t-1})`` (the loss is diverging; further steps only waste jobs).

Suggestion rule: **the rate of the minimum smoothed loss, divided by 10** (:func:`suggest_learning_rate`).
The minimum sits where the rate has just become too large for the loss to keep falling, i.e. at the edge of
stability; one decade below it is the largest rate that still descends reliably. Unlike the "steepest
slope" rule it reads no derivative of a noisy curve, so it does not jump between distant rates when two
stretches of the curve are about equally steep, and it does not depend on how far the EMA's lag stretches
the descent. On well-posed problems it lands within a factor of 3 of the best rate of a fine constant-rate
grid (see ``tests/integration/test_range_test.py``).

Nothing here imports Spark or MLflow: the distributed step is passed in as a function
(:func:`run_range_test`), as Spark MLlib's ``GradientDescent`` takes its ``Gradient``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.sgd._types import FloatArray

#: The suggestion is the minimum-loss rate divided by this.
SUGGESTION_DIVISOR = 10.0
SUGGESTION_RULE = "min_smoothed_loss_rate / 10"


def range_test_rates(min_lr: float, max_lr: float, num_steps: int) -> FloatArray:
    """``num_steps`` rates growing exponentially from ``min_lr`` to ``max_lr`` inclusive, shape ``(num_steps,)``."""
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise ValueError(f"need 0 < min_lr < max_lr < inf, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps!r}")
    rates: FloatArray = np.geomspace(min_lr, max_lr, num_steps)
    return rates


@dataclass
class LossSmoother:
    """Bias-corrected exponential moving average of the raw losses, fed one loss at a time.

    ``smoothing`` is ``beta`` in the module formula; ``0`` leaves the losses as they are.
    """

    smoothing: float
    average: float = 0.0
    count: int = 0

    def update(self, loss: float) -> float:
        """Add ``loss_t``; return ``smoothed_t``."""
        self.count += 1
        self.average = self.smoothing * self.average + (1.0 - self.smoothing) * loss
        return self.average / (1.0 - self.smoothing ** self.count)


def smooth_losses(losses: Sequence[float] | FloatArray, smoothing: float) -> FloatArray:
    """The smoothed curve of a whole loss history, shape ``(len(losses),)``."""
    smoother = LossSmoother(smoothing)
    return np.array([smoother.update(float(loss)) for loss in losses], dtype=np.float64)


def should_stop(smoothed_loss: float, best_smoothed_loss: float, stop_factor: float) -> bool:
    """Diverging: ``smoothed_loss`` is not finite or exceeds ``stop_factor * best_smoothed_loss``."""
    return not math.isfinite(smoothed_loss) or smoothed_loss > stop_factor * best_smoothed_loss


def suggest_learning_rate(learning_rates: Sequence[float] | FloatArray,
                          smoothed_losses: Sequence[float] | FloatArray) -> float:
    """The rate of the lowest finite smoothed loss divided by :data:`SUGGESTION_DIVISOR` (see module doc).

    Raises
    ------
    ValueError
        No smoothed loss is finite, or the arrays differ in length.
    """
    rates = np.asarray(learning_rates, dtype=np.float64)
    smoothed = np.asarray(smoothed_losses, dtype=np.float64)
    if rates.shape != smoothed.shape:
        raise ValueError(f"{rates.shape[0]} rates but {smoothed.shape[0]} smoothed losses")
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise ValueError("no finite smoothed loss: the range test diverged at its first step")
    best = int(np.argmin(np.where(finite, smoothed, np.inf)))
    return float(rates[best] / SUGGESTION_DIVISOR)


@dataclass(frozen=True)
class RangeTestResult:
    """What a range test recorded, one entry per step run (``steps <= num_steps``)."""

    learning_rates: FloatArray  # (steps,) the rate of each step
    losses: FloatArray  # (steps,) raw mini-batch objective before the step
    smoothed_losses: FloatArray  # (steps,)
    stopped_early: bool  # the stop rule fired before num_steps
    suggestion: float

    @property
    def steps(self) -> int:
        return int(self.learning_rates.shape[0])

    @property
    def min_loss_rate(self) -> float:
        """The rate of the lowest finite smoothed loss."""
        return self.suggestion * SUGGESTION_DIVISOR


def run_range_test(step: Callable[[float], float], learning_rates: Sequence[float] | FloatArray,
                   smoothing: float, stop_factor: float) -> RangeTestResult:
    """Run ``step(rate_t)`` for each rate until the stop rule fires; suggest a rate.

    Parameters
    ----------
    step
        Takes one optimizer step with the given rate from the current model and returns the mini-batch
        objective at the model it started from (the caller owns the model).
    learning_rates : array of shape (num_steps,)
        From :func:`range_test_rates`.
    smoothing, stop_factor
        ``range_test.smoothing`` and ``range_test.stop_factor``.
    """
    smoother = LossSmoother(smoothing)
    rates: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    best = math.inf
    stopped = False
    for index, rate in enumerate(learning_rates):
        loss = float(step(float(rate)))
        value = smoother.update(loss) if math.isfinite(loss) else math.nan
        rates.append(float(rate))
        losses.append(loss)
        smoothed.append(value)
        if index > 0 and should_stop(value, best, stop_factor):
            stopped = index < len(learning_rates) - 1
            break
        best = min(best, value)
    result_rates = np.array(rates)
    result_smoothed = np.array(smoothed)
    return RangeTestResult(result_rates, np.array(losses), result_smoothed, stopped,
                           suggest_learning_rate(result_rates, result_smoothed))


# ------------------------------------------------------------------------------------------- auto grids


def auto_grid(center: float, num: int, span: float) -> list[float]:
    """``num`` log-spaced rates from ``center / sqrt(span)`` to ``center * sqrt(span)``, ascending.

    The grid covers a factor ``span`` in total, centred (in log space) on ``center``; ``num = 1`` gives
    ``[center]``.
    """
    if not (center > 0 and math.isfinite(center)):
        raise ValueError(f"center must be finite and > 0, got {center!r}")
    if num < 1 or span <= 1:
        raise ValueError(f"need num >= 1 and span > 1, got num={num!r}, span={span!r}")
    if num == 1:
        return [float(center)]
    half = math.sqrt(span)
    return [float(rate) for rate in np.geomspace(center / half, center * half, num)]


def refine_span(grid: Sequence[float]) -> float:
    """The span of a second-round grid around the first round's best rate: two of its grid steps.

    Rates of round 1 are ``ratio = (max / min) ** (1 / (num - 1))`` apart; the best lies within one step of
    the true optimum on either side, so round 2 spans ``ratio ** 2`` (from one neighbour to the other).
    """
    rates = sorted(grid)
    if len(rates) < 2:
        raise ValueError("refining needs a first-round grid of at least 2 rates")
    ratio = (rates[-1] / rates[0]) ** (1.0 / (len(rates) - 1))
    return float(ratio**2)
