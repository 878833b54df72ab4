"""Schedules against hand-written scalar formulas, the epoch-to-step layout, the rules; the adaptive-rate helper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sgd import SpecError
from pipelines.sgd.schedules import SCHEDULE_NAMES, AdaptiveRateState, ScheduleSpec, StepSchedule, multiplier

TOTAL_STEPS = 40
PARAMETERS = {"power_t": 0.35, "step_size": 7, "gamma": 0.9, "min_factor": 0.1}
PIECES = {"epochs": (1, 4, 13), "rates": (0.3, 0.07, 0.011)}


def _scalar_one_cycle(t: int, total: int, spec: StepSchedule) -> float:
    """torch.optim.lr_scheduler.OneCycleLR.get_lr, written out for one step."""
    step_num = t - 1
    initial = 1.0 / spec.div_factor
    final = initial / spec.final_div_factor
    phases = [(spec.pct_start * total - 1, initial, 1.0), (total - 1, 1.0, final)]
    start_step = 0.0
    for index, (end_step, start_value, end_value) in enumerate(phases):
        if step_num <= end_step or index == len(phases) - 1:
            pct = (step_num - start_step) / (end_step - start_step)
            return end_value + (start_value - end_value) / 2.0 * (math.cos(math.pi * pct) + 1)
        start_step = end_step
    raise AssertionError("unreachable")


def _scalar_inner(spec: StepSchedule, t: int, total: int) -> float:
    if spec.name in ("constant", "adaptive"):  # adaptive changes the rate between epochs, not per step
        return 1.0
    if spec.name == "inv_sqrt":
        return 1.0 / math.sqrt(t)
    if spec.name == "invscaling":
        return 1.0 / t**spec.power_t
    if spec.name == "step":
        return spec.gamma ** ((t - 1) // spec.step_size)
    if spec.name == "exponential":
        return spec.gamma ** (t - 1)
    if spec.name in ("cosine", "warmup_cosine"):
        return spec.min_factor + (1 - spec.min_factor) * 0.5 * (1 + math.cos(math.pi * (t - 1) / total))
    if spec.name == "piecewise":  # one step per epoch here: the step is the epoch
        return [rate for first, rate in zip(PIECES["epochs"], PIECES["rates"], strict=True) if first <= t][-1]
    return _scalar_one_cycle(t, total, spec)


def _scalar_multiplier(spec: StepSchedule, t: int, total: int) -> float:
    warmup = spec.warmup_steps
    if warmup and t <= warmup:
        return t / warmup
    return _scalar_inner(spec, t - warmup, total - warmup)


@pytest.mark.parametrize("warmup_steps", [0, 5])
@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_multiplier_matches_scalar_formula(name: str, warmup_steps: int) -> None:
    # one step per epoch: the epoch-based spec's durations are the step counts
    spec = ScheduleSpec(name, warmup_epochs=warmup_steps, power_t=PARAMETERS["power_t"],
                        step_epochs=PARAMETERS["step_size"], gamma=PARAMETERS["gamma"],
                        min_factor=PARAMETERS["min_factor"], **PIECES).per_step(1)
    steps = np.arange(1, TOTAL_STEPS + 1)
    expected = [_scalar_multiplier(spec, int(t), TOTAL_STEPS) for t in steps]
    vectorized = multiplier(spec, steps, TOTAL_STEPS)
    assert isinstance(vectorized, np.ndarray)
    np.testing.assert_allclose(vectorized, expected, rtol=1e-12)
    for t in (1, 9, TOTAL_STEPS):
        scalar = multiplier(spec, t, TOTAL_STEPS)
        assert isinstance(scalar, float)
        assert scalar == pytest.approx(expected[t - 1], rel=1e-12)


def test_inv_sqrt_is_mllib_and_invscaling_is_sklearn() -> None:
    steps = np.arange(1, 11)
    np.testing.assert_allclose(multiplier(StepSchedule("inv_sqrt"), steps, 10), 1 / np.sqrt(steps))
    np.testing.assert_allclose(
        multiplier(StepSchedule("invscaling", power_t=0.25), steps, 10), 1 / np.power(steps, 0.25)
    )


def test_one_cycle_peaks_at_one_and_ends_near_final_value() -> None:
    spec = StepSchedule("one_cycle")
    values = np.asarray(multiplier(spec, np.arange(1, 101), 100))
    assert values[0] == pytest.approx(1 / 25)
    assert values.max() == pytest.approx(1.0)
    assert int(values.argmax()) == 29  # step_num = pct_start * T - 1
    assert values[-1] == pytest.approx(1 / 25 / 1e4)


def test_cosine_holds_its_floor_after_the_last_step() -> None:
    spec = StepSchedule("cosine", min_factor=0.2)
    assert multiplier(spec, 11, 10) == pytest.approx(0.2)
    assert multiplier(spec, 50, 10) == pytest.approx(0.2)


def test_multiplier_keeps_the_shape_of_a_step_matrix() -> None:
    steps = np.array([[1, 2], [3, 4]])
    assert np.asarray(multiplier(StepSchedule("exponential"), steps, 4)).shape == (2, 2)


def test_epoch_durations_are_laid_out_over_the_steps_of_an_epoch() -> None:
    spec = ScheduleSpec("exponential", warmup_epochs=0.5, step_epochs=2.0, gamma=0.25)
    steps = spec.per_step(8)
    assert (steps.warmup_steps, steps.step_size) == (4, 16)
    assert steps.gamma ** 8 == pytest.approx(0.25)  # exponential: gamma per epoch
    assert ScheduleSpec("step", gamma=0.25).per_step(8).gamma == 0.25  # step: gamma per step_epochs
    assert ScheduleSpec("adaptive").per_step(3).name == "constant"  # the loop divides adaptive rates


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"name": "linear"}, "name = 'linear': must be one of constant, inv_sqrt"),
        ({"power_t": 0.0}, r"power_t = 0.0: must be a number > 0"),
        ({"step_epochs": 0}, r"step_epochs = 0: must be a number > 0"),
        ({"n_iter_no_change": 2.5}, r"n_iter_no_change = 2.5: must be an integer >= 1"),
        ({"gamma": 1.5}, r"gamma = 1.5: must be a number in \(0, 1\]"),
        ({"min_factor": -0.1}, r"min_factor = -0.1: must be a number in \[0, 1\]"),
        ({"warmup_epochs": -1}, r"warmup_epochs = -1: must be a number >= 0"),
        ({"pct_start": 1.0}, r"pct_start = 1.0: must be a number in \(0, 1\)"),
        ({"div_factor": 0.5}, r"div_factor = 0.5: must be a number >= 1"),
        ({"final_div_factor": 0.0}, r"final_div_factor = 0.0: must be a number >= 1"),
        ({"tol": float("nan")}, r"tol = nan: must be a number >= 0"),
    ],
)
def test_invalid_parameters_name_the_parameter_value_and_rule(
    parameters: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as raised:
        ScheduleSpec(**parameters)  # type: ignore[arg-type]
    assert raised.value.parameter == next(iter(parameters))


def test_multiplier_rejects_steps_before_one_and_empty_runs() -> None:
    with pytest.raises(ValueError, match="1-based"):
        multiplier(StepSchedule(), 0, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        multiplier(StepSchedule(), 1, 0)


def test_adaptive_rate_divides_by_five_after_patience_runs_out() -> None:
    state = AdaptiveRateState.start(n_rows=3, n_iter_no_change=2)
    history = [
        np.array([1.0, 1.0, 1.0]),
        np.array([0.5, 1.0, np.nan]),  # row 0 improves; row 1 stalls; row 2 diverged
        np.array([0.4, 1.0, np.nan]),  # rows 1 and 2 hit patience 2
        np.array([0.39, 0.9, np.nan]),  # row 0 improves by less than tol
    ]
    multipliers = [state.update(val_losses, tol=0.05) for val_losses in history]
    np.testing.assert_allclose(multipliers[1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(multipliers[2], [1.0, 0.2, 0.2])
    np.testing.assert_allclose(multipliers[3], [1.0, 0.2, 0.2])
    np.testing.assert_array_equal(state.epochs_without_improvement, [1, 0, 1])
    np.testing.assert_allclose(state.best_losses, [0.39, 0.9, 1.0])


def test_piecewise_gives_each_epochs_rate_to_its_steps_exactly() -> None:
    spec = ScheduleSpec("piecewise", epochs=[1, 3], rates=[0.1, 0.025]).per_step(4)
    values = multiplier(spec, np.arange(1, 17), 16)
    assert isinstance(values, np.ndarray)
    assert values.tolist() == [0.1] * 8 + [0.025] * 8  # epochs 1-2, then 3-4: the rates' own bits


@pytest.mark.parametrize(("pieces", "message"), [
    ({"epochs": [], "rates": []}, "epochs = []: piecewise needs the first epoch of each piece"),
    ({"epochs": [2, 5], "rates": [0.1, 0.2]}, "epochs = [2, 5]: piecewise needs"),
    ({"epochs": [1, 1], "rates": [0.1, 0.2]}, "strictly increasing from 1"),
    ({"epochs": [1, 3], "rates": [0.1]}, "rates = [0.1]: piecewise needs one finite rate > 0 per piece (2)"),
    ({"epochs": [1], "rates": [0.0]}, "rates = [0.0]"),
])
def test_piecewise_rules(pieces: dict[str, list[float]], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        ScheduleSpec("piecewise", **pieces)  # type: ignore[arg-type]
