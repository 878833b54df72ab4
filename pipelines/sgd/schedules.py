"""Learning-rate multipliers as a function of the step.

A schedule is configured in epochs (:class:`ScheduleSpec`, validated once) and laid out over optimizer
steps (:meth:`ScheduleSpec.per_step` gives a :class:`StepSchedule`) once the steps per epoch are known. It
maps the 1-based step ``t`` (an int or an int array) and the total number
of steps ``T`` to a multiplier; the step size of model row ``k`` at step ``t`` is
``learning_rates[k] * multiplier(spec, t, T)``.

=============== ==============================================================
name            multiplier(t, T)
=============== ==============================================================
constant        ``1``
inv_sqrt        ``1 / sqrt(t)`` (Spark MLlib ``GradientDescent``: ``stepSize / sqrt(iter)``)
invscaling      ``1 / t**power_t`` (scikit-learn: ``eta = eta0 / pow(t, power_t)``)
step            ``gamma**floor((t - 1) / step_size)``
exponential     ``gamma**(t - 1)``
cosine          ``min_factor + (1 - min_factor) * 0.5 * (1 + cos(pi * (t - 1) / T))``
one_cycle       PyTorch ``OneCycleLR`` (cosine annealing, two phases) with peak 1
warmup_cosine   ``cosine`` behind a linear warm-up of ``warmup_steps`` steps
piecewise       ``rates[i]`` in the epochs from ``epochs[i]`` to ``epochs[i + 1] - 1`` (the step's epoch is
                ``ceil(t / steps_per_epoch)``)
=============== ==============================================================

``piecewise`` replays a per-epoch learning rate (a population-based sweep's winning schedule, exported as
``sweep.learning_rates: [1.0]`` and ``rates`` = the rates themselves: ``1.0 * rate`` is ``rate`` to the bit).

Warm-up. With ``warmup_steps = W > 0`` every schedule is preceded by a linear ramp
``t / W`` for ``t <= W`` (reaching 1 at ``t = W``); afterwards the inner schedule
sees step ``t - W`` out of ``T - W`` steps. ``warmup_cosine`` is therefore the same
as ``cosine`` with ``warmup_steps`` set; it exists as a name for configuration.

Steps past ``T`` keep the final value for ``cosine`` and ``one_cycle`` (progress is
clipped at 1) and continue the formula for the others.

scikit-learn's ``adaptive`` rate (divide by 5 after ``n_iter_no_change`` epochs
without improvement) depends on validation losses, not on ``t``; it is the
epoch-level state :class:`AdaptiveRateState`, owned by the sweep loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import ClassVar

import numpy as np

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sgd._validation import Interval, OneOf, Rule, SpecError, check_rules

SCHEDULE_NAMES: tuple[str, ...] = (
    "constant",
    "inv_sqrt",
    "invscaling",
    "step",
    "exponential",
    "cosine",
    "one_cycle",
    "warmup_cosine",
    "adaptive",
    "piecewise",
)
"""Every schedule name lrsweep knows (the configuration's ``train.schedule.name`` is checked against it)."""


@dataclass(frozen=True)
class ScheduleSpec:
    """A named schedule and its parameters, durations in epochs; unused parameters are ignored.

    The configuration's ``train.schedule`` is this spec, validated when the configuration is loaded
    (:data:`RULES`). :meth:`per_step` lays it out over optimizer steps once the steps per epoch are known.

    Parameters
    ----------
    name : str
        One of :data:`SCHEDULE_NAMES`.
    warmup_epochs : float
        Length of the linear warm-up in front of any schedule, ``>= 0``.
    power_t : float
        Exponent of ``invscaling``, ``> 0``.
    step_epochs : float
        Epochs between decays of ``step``, ``> 0``.
    gamma : float
        Decay factor of ``step`` (per ``step_epochs``) and ``exponential`` (per epoch), ``0 < gamma <= 1``.
    min_factor : float
        Floor of ``cosine`` / ``warmup_cosine``, ``0 <= min_factor <= 1``.
    pct_start : float
        ``one_cycle``: share of the steps spent increasing, ``0 < pct_start < 1``.
    div_factor : float
        ``one_cycle``: initial multiplier is ``1 / div_factor``, ``>= 1``.
    final_div_factor : float
        ``one_cycle``: final multiplier is ``1 / (div_factor * final_div_factor)``, ``>= 1``.
    n_iter_no_change : int
        ``adaptive``: epochs without improvement before the rate is divided by 5, ``>= 1``.
    tol : float
        ``adaptive``: the decrease of the validation loss that counts as an improvement, ``>= 0``.
    epochs : tuple of int
        ``piecewise``: the first epoch of each piece, strictly increasing from 1.
    rates : tuple of float
        ``piecewise``: each piece's multiplier (finite, ``> 0``), one per entry of ``epochs``.
    """

    name: str = "constant"
    warmup_epochs: float = 0.0
    power_t: float = 0.5
    step_epochs: float = 1.0
    gamma: float = 0.5
    min_factor: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    n_iter_no_change: int = 5
    tol: float = 1e-4
    epochs: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()

    RULES: ClassVar[dict[str, Rule]] = {
        "name": OneOf(SCHEDULE_NAMES),
        "warmup_epochs": Interval(0, None),
        "power_t": Interval(0, None, "neither"),
        "step_epochs": Interval(0, None, "neither"),
        "gamma": Interval(0, 1, "right"),
        "min_factor": Interval(0, 1),
        "pct_start": Interval(0, 1, "neither"),
        "div_factor": Interval(1, None),
        "final_div_factor": Interval(1, None),
        "n_iter_no_change": Interval(1, None, integer=True),
        "tol": Interval(0, None),
    }
    """One rule per parameter, applied at construction."""

    def __post_init__(self) -> None:
        check_rules(self, self.RULES)
        object.__setattr__(self, "epochs", tuple(self.epochs))
        object.__setattr__(self, "rates", tuple(self.rates))
        if self.name == "piecewise":
            _check_pieces(self.epochs, self.rates)
            object.__setattr__(self, "rates", tuple(float(rate) for rate in self.rates))

    def per_step(self, steps_per_epoch: int) -> StepSchedule:
        """The schedule over optimizer steps: durations times ``steps_per_epoch``.

        ``step_size = max(1, round(step_epochs * steps_per_epoch))``,
        ``warmup_steps = round(warmup_epochs * steps_per_epoch)``, and ``exponential``'s per-step factor
        ``gamma ** (1 / steps_per_epoch)``. ``adaptive`` trains at a constant rate per step (the sweep loop
        divides the rate on plateaus).
        """
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
        name = "constant" if self.name == "adaptive" else self.name
        gamma = self.gamma ** (1.0 / steps_per_epoch) if name == "exponential" else self.gamma
        piece_starts = tuple((epoch - 1) * steps_per_epoch + 1 for epoch in self.epochs) if name == "piecewise" \
            else ()
        return StepSchedule(
            name=name, power_t=self.power_t, step_size=max(1, round(self.step_epochs * steps_per_epoch)),
            gamma=gamma, min_factor=self.min_factor, warmup_steps=round(self.warmup_epochs * steps_per_epoch),
            pct_start=self.pct_start, div_factor=self.div_factor, final_div_factor=self.final_div_factor,
            piece_starts=piece_starts, piece_rates=self.rates if name == "piecewise" else ())


def _check_pieces(epochs: tuple[int, ...], rates: tuple[float, ...]) -> None:
    """``piecewise``'s rules: pieces from epoch 1 on, strictly increasing, one finite rate > 0 each."""
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) for e in epochs) or epochs[0] != 1 \
            or any(later <= earlier for earlier, later in pairwise(epochs)):
        raise SpecError("epochs", list(epochs), "piecewise needs the first epoch of each piece: integers strictly "
                        "increasing from 1")
    if len(rates) != len(epochs) or not all(Interval(0, None, "neither").accepts(rate) for rate in rates):
        raise SpecError("rates", list(rates), f"piecewise needs one finite rate > 0 per piece ({len(epochs)})")


@dataclass(frozen=True)
class StepSchedule:
    """A schedule laid out over optimizer steps (:meth:`ScheduleSpec.per_step`); the input of :func:`multiplier`.

    Derived from a validated :class:`ScheduleSpec`, so it carries no rules of its own. ``name`` is one of
    :data:`SCHEDULE_NAMES` except ``adaptive``; ``step_size`` and ``warmup_steps`` count steps; ``gamma`` is
    per step for ``exponential``.
    """

    name: str = "constant"
    power_t: float = 0.5
    step_size: int = 1
    gamma: float = 0.5
    min_factor: float = 0.0
    warmup_steps: int = 0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    piece_starts: tuple[int, ...] = ()  # piecewise: the first step of each piece
    piece_rates: tuple[float, ...] = ()


CONSTANT = StepSchedule()
"""The constant schedule (multiplier 1 at every step)."""


def multiplier(spec: StepSchedule, t: int | IntArray, total_steps: int) -> float | FloatArray:
    """Learning-rate multiplier at 1-based step ``t`` of ``total_steps``.

    Parameters
    ----------
    spec : StepSchedule
    t : int or ndarray of int
        1-based step(s), all ``>= 1``; an array gives an array of the same shape.
    total_steps : int
        ``T >= 1``, the number of steps the schedule is laid out over.

    Returns
    -------
    float or ndarray of float64
        A float for an int ``t``, otherwise an array shaped like ``t``.

    Raises
    ------
    ValueError
        If ``total_steps < 1`` or any ``t < 1``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    steps = np.asarray(t, dtype=np.float64)
    if steps.size and float(steps.min()) < 1:
        raise ValueError(f"step t must be >= 1 (1-based), got min {float(steps.min())!r}")
    values = _with_warmup(spec, steps, float(total_steps))
    if np.ndim(t) == 0:
        return float(values)
    return values


def _with_warmup(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    inner = _INNER_SCHEDULES[spec.name]
    warmup = float(spec.warmup_steps)
    if warmup == 0:
        return inner(spec, steps, total_steps)
    inner_steps = np.maximum(steps - warmup, 1.0)
    inner_total = max(total_steps - warmup, 1.0)
    result: FloatArray = np.where(steps <= warmup, steps / warmup, inner(spec, inner_steps, inner_total))
    return result


def _constant(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    return np.ones_like(steps)


def _inv_sqrt(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    result: FloatArray = 1.0 / np.sqrt(steps)
    return result


def _invscaling(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    result: FloatArray = 1.0 / np.power(steps, spec.power_t)
    return result


def _step(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    result: FloatArray = np.power(spec.gamma, np.floor((steps - 1.0) / spec.step_size))
    return result


def _exponential(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    result: FloatArray = np.power(spec.gamma, steps - 1.0)
    return result


def _cosine(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    progress = np.minimum((steps - 1.0) / total_steps, 1.0)
    result: FloatArray = spec.min_factor + (1.0 - spec.min_factor) * 0.5 * (1.0 + np.cos(np.pi * progress))
    return result


def _piecewise(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    piece = np.searchsorted(np.asarray(spec.piece_starts, dtype=np.float64), steps, side="right") - 1
    result: FloatArray = np.asarray(spec.piece_rates, dtype=np.float64)[piece]
    return result


def _one_cycle(spec: StepSchedule, steps: FloatArray, total_steps: float) -> FloatArray:
    """PyTorch ``OneCycleLR`` (``three_phase=False``, cosine) with peak multiplier 1.

    Torch's ``step_num`` is ``t - 1``. Phase 1 anneals from ``1 / div_factor`` to 1
    over ``step_num in [0, pct_start * T - 1]``; phase 2 from 1 to
    ``1 / (div_factor * final_div_factor)`` over ``[pct_start * T - 1, T - 1]``, with
    ``anneal(a, b, pct) = b + (a - b) / 2 * (1 + cos(pi * pct))``.
    """
    initial = 1.0 / spec.div_factor
    final = initial / spec.final_div_factor
    step_num = steps - 1.0
    phase1_end = spec.pct_start * total_steps - 1.0
    phase2_end = total_steps - 1.0
    # Torch divides by phase1_end, which is 0 when pct_start * T == 1; start at the peak then.
    phase1_pct = step_num / phase1_end if phase1_end > 0 else np.ones_like(step_num)
    phase2_length = phase2_end - phase1_end
    phase2_pct = (step_num - phase1_end) / phase2_length if phase2_length > 0 else np.ones_like(step_num)
    rising = _cosine_anneal(initial, 1.0, np.clip(phase1_pct, 0.0, 1.0))
    falling = _cosine_anneal(1.0, final, np.clip(phase2_pct, 0.0, 1.0))
    result: FloatArray = np.where(step_num <= phase1_end, rising, falling)
    return result


def _cosine_anneal(start: float, end: float, pct: FloatArray) -> FloatArray:
    result: FloatArray = end + (start - end) / 2.0 * (1.0 + np.cos(np.pi * pct))
    return result


_INNER_SCHEDULES: dict[str, Callable[[StepSchedule, FloatArray, float], FloatArray]] = {
    "constant": _constant,
    "inv_sqrt": _inv_sqrt,
    "invscaling": _invscaling,
    "step": _step,
    "exponential": _exponential,
    "cosine": _cosine,
    "one_cycle": _one_cycle,
    "warmup_cosine": _cosine,
    "piecewise": _piecewise,
}


@dataclass
class AdaptiveRateState:
    """scikit-learn's ``adaptive`` learning rate, per model row, at epoch level.

    After each epoch the sweep loop calls :meth:`update` with the validation losses.
    A row *improves* when ``val_loss < best_loss - tol``; otherwise its counter of
    epochs without improvement grows. When the counter reaches ``n_iter_no_change``,
    the row's multiplier is divided by ``divisor`` (5 in scikit-learn) and the
    counter restarts. A NaN loss (a diverged row) never counts as an improvement.

    Attributes
    ----------
    multipliers : ndarray of shape (K,)
        Current learning-rate multipliers, starting at 1.
    best_losses : ndarray of shape (K,)
        Lowest validation loss seen, starting at ``inf``.
    epochs_without_improvement : ndarray of shape (K,), int64
    n_iter_no_change : int
        Patience in epochs, ``>= 1``.
    divisor : float
        Factor the multiplier is divided by, ``> 1``.
    """

    multipliers: FloatArray
    best_losses: FloatArray
    epochs_without_improvement: IntArray
    n_iter_no_change: int = 5
    divisor: float = field(default=5.0)

    @classmethod
    def start(cls, n_rows: int, n_iter_no_change: int = 5, divisor: float = 5.0) -> AdaptiveRateState:
        """Fresh state for ``n_rows`` model rows (multipliers 1, best losses ``inf``)."""
        if n_iter_no_change < 1:
            raise ValueError(f"n_iter_no_change must be >= 1, got {n_iter_no_change!r}")
        if divisor <= 1:
            raise ValueError(f"divisor must be > 1, got {divisor!r}")
        return cls(
            multipliers=np.ones(n_rows),
            best_losses=np.full(n_rows, np.inf),
            epochs_without_improvement=np.zeros(n_rows, dtype=np.int64),
            n_iter_no_change=n_iter_no_change,
            divisor=divisor,
        )

    def update_rows(self, rows: IntArray, val_losses: FloatArray, tol: float) -> None:
        """:meth:`update` for the given rows only; the other rows' state is left as it is.

        Parameters
        ----------
        rows : int ndarray of shape (R,)
        val_losses : ndarray of shape (R,)
        tol : float
        """
        sub = AdaptiveRateState(self.multipliers[rows], self.best_losses[rows],
                                self.epochs_without_improvement[rows], self.n_iter_no_change, self.divisor)
        sub.update(val_losses, tol)
        self.multipliers = self.multipliers.copy()
        self.multipliers[rows] = sub.multipliers
        self.best_losses[rows] = sub.best_losses
        self.epochs_without_improvement[rows] = sub.epochs_without_improvement

    def update(self, val_losses: FloatArray, tol: float) -> FloatArray:
        """Record one epoch's validation losses and return the new multipliers.

        Parameters
        ----------
        val_losses : ndarray of shape (K,)
        tol : float
            Minimum decrease that counts as an improvement.

        Returns
        -------
        ndarray of shape (K,)
            A copy of :attr:`multipliers` after the update.
        """
        improved = val_losses < self.best_losses - tol
        epochs_without_improvement: IntArray = np.where(improved, 0, self.epochs_without_improvement + 1)
        patience_exhausted = epochs_without_improvement >= self.n_iter_no_change
        multipliers: FloatArray = np.where(
            patience_exhausted, self.multipliers / self.divisor, self.multipliers
        )
        self.best_losses = np.fmin(self.best_losses, val_losses)
        self.epochs_without_improvement = np.where(patience_exhausted, 0, epochs_without_improvement)
        self.multipliers = multipliers
        updated_multipliers: FloatArray = multipliers.copy()
        return updated_multipliers
