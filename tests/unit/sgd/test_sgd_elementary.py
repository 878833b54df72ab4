"""The elementary functions the compiled kernels vectorize (pipelines.sgd.elementary) against the C library, over
their whole range, the limits and the special values; and the same bits in a vectorized loop, in its scalar
tail, one at a time and from Python."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from numba import njit

from pipelines.sgd import elementary
from pipelines.sgd.compiling import JIT_OPTIONS

SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -1.0, 2.0, 0.5, 1e-17, -1e-17, 1e-300, -1e-300, 5e-324,
            2.2250738585072014e-308, 2.225073858507201e-308, 1e308, 1.7976931348623157e308, -0.9999999999,
            709.78, 709.7827, 709.782712893384, -708.39, -708.4, -745.13, -745.1332191019412, -745.14, 0.34657359,
            -0.34657359, 1.4142135623730951, 0.7071067811865476]


def _reference(name: str) -> Callable[[float], float]:
    """The C library's function (Python's ``math``), with IEEE's results where ``math`` raises."""
    def exp(x: float) -> float:
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf

    def log(x: float) -> float:
        if math.isnan(x) or x < 0.0:
            return math.nan
        return -math.inf if x == 0.0 else math.log(x)

    def log1p(x: float) -> float:
        if math.isnan(x) or x < -1.0:
            return math.nan
        return -math.inf if x == -1.0 else math.log1p(x)

    return {"exp": exp, "log": log, "log1p": log1p}[name]


def _arguments(name: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    wide = {"exp": rng.uniform(-750.0, 712.0, 40_000),
            "log": np.exp(rng.uniform(-745.0, 709.0, 40_000)),
            "log1p": np.exp(rng.uniform(-745.0, 709.0, 40_000)) - 0.5}[name]
    near = {"exp": rng.uniform(-2.0, 2.0, 20_000), "log": rng.uniform(0.5, 2.0, 20_000),
            "log1p": rng.uniform(-0.5, 1.0, 20_000)}[name]
    return np.concatenate([wide, near, SPECIALS])


def _loop(function: Callable[[float], float]) -> Callable[[np.ndarray, np.ndarray], None]:
    @njit(**JIT_OPTIONS)
    def loop(arguments: np.ndarray, out: np.ndarray) -> None:
        for i in range(arguments.shape[0]):
            out[i] = function(arguments[i])

    return loop  # type: ignore[no-any-return]


def _ulps(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The distance in units in the last place of finite results of one sign; 0 where both are the same special
    value (NaN included); a large number where one is special and the other not."""
    same = (ours.view(np.int64) == theirs.view(np.int64)) | (np.isnan(ours) & np.isnan(theirs))
    comparable = np.isfinite(ours) & np.isfinite(theirs) & (np.signbit(ours) == np.signbit(theirs))
    distance = np.where(comparable, np.abs(ours.view(np.int64) - theirs.view(np.int64)), 2**62)
    return np.where(same, 0, distance)


@pytest.mark.parametrize("name, most_ulps", [("exp", 1), ("log", 1), ("log1p", 1)])
def test_an_elementary_function_is_within_an_ulp_of_the_c_library(name: str, most_ulps: int) -> None:
    arguments = _arguments(name)
    ours = np.empty_like(arguments)
    _loop(getattr(elementary, name))(arguments, ours)
    reference = _reference(name)
    theirs = np.array([reference(float(x)) for x in arguments])
    ulps = _ulps(ours, theirs)
    worst = int(np.argmax(ulps))
    assert ulps.max() <= most_ulps, f"{name}({arguments[worst]!r}) = {ours[worst]!r}, C library {theirs[worst]!r}"
    assert (ulps == 0).mean() > 0.85  # mostly the same bits


@pytest.mark.parametrize("name", ["exp", "log", "log1p"])
def test_a_value_has_the_same_bits_in_any_lane_alone_and_from_python(name: str) -> None:
    """Every element of a vectorized loop (odd length: a scalar tail too), each argument in a loop of one, and the
    function run as Python give one value's bits."""
    function = getattr(elementary, name)
    arguments = _arguments(name)[::97].copy()
    assert arguments.size % 8 != 0
    together = np.empty_like(arguments)
    loop = _loop(function)
    loop(arguments, together)
    alone = np.empty(1)
    for index, argument in enumerate(arguments):
        loop(np.array([argument]), alone)
        from_python = function(float(argument))
        assert alone.view(np.int64)[0] == together.view(np.int64)[index] or np.isnan(together[index])
        assert np.float64(from_python).view(np.int64) == together.view(np.int64)[index] or \
            (math.isnan(from_python) and np.isnan(together[index])), f"{name}({argument!r})"


def test_log1p_of_the_unit_interval_is_log1p_there() -> None:
    arguments = np.concatenate([np.random.default_rng(3).uniform(0.0, 1.0, 20_000),
                                np.exp(np.random.default_rng(4).uniform(-745.0, 0.0, 20_000)),
                                [0.0, 5e-324, 1e-300, 1e-17, 2.0**-53, 2.0**-52, 0.4142135623730951, 0.5, 1.0,
                                 math.nan]])
    unit, general = np.empty_like(arguments), np.empty_like(arguments)
    _loop(elementary.log1p_unit)(arguments, unit)
    _loop(elementary.log1p)(arguments, general)
    assert unit.tobytes() == general.tobytes()
