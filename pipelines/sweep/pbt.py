"""Population-based training over the grid's points (``sweep.strategy: pbt``): exploit is a row copy.

The grid's P points are the population (Jaderberg et al. 2017). After epoch ``k * interval`` (for every ``k``
with ``k * interval + 2 <= E``) the running points are ranked by validation loss (mean over seeds, ties by
point index); with ``n = max(1, floor(quantile * P))``:

* the ``n`` best running points are the *sources*; the ``n`` worst running points and every stopped one
  (diverged, early-stopped) are the *targets*;
* each target draws a source uniformly and takes its models after epoch ``k * interval + 1`` (weights,
  intercepts, optimizer state, progressive loss sums: :meth:`~pipelines.distributed.engine.GridTrainer.copy_rows`);
  the engine fuses the evaluation of epoch ``e`` into the job that trains epoch ``e + 1``, so the ranking is
  known one epoch late and the copy is of the epoch just trained, as a stopped point's rollback is;
* then *explores*: with probability ``resample_probability`` a rate drawn log-uniformly from the configured
  range ``[min, max]`` of the grid's rates, else the source's rate times a factor drawn from ``factors``
  (and the same for ``reg_param`` when the grid varies it, resampled between its smallest positive and largest
  value; otherwise, and for ``l1_ratio``, the target takes the source's); the target trains from epoch
  ``k * interval + 2`` on at the explored values.

Every draw comes from ``numpy.random.default_rng([seed, epoch])``: a counter-based stream per ranking, so a
resumed sweep draws exactly what an uninterrupted one did with no generator state to save. The population's
current hyperparameters are this policy's arrays (checkpointed with the other policies'); the per-epoch history
of each point (:class:`Lineage`) is the grid state's.

A point's *lineage* is the path its models took: trained by itself, or copied from a source that trained the
epoch. :meth:`Lineage.path` walks it back from any (epoch, point); its rates per epoch are a ``piecewise``
schedule that a single-rate sweep replays bit for bit, because every point sees the same batches in the same
order (its seed's) and a row's bits do not depend on the rows it trains beside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipelines.sgd._types import FloatArray, IntArray
from pipelines.sweep.policies import Decision, EpochView

#: A point's per-epoch lineage values (:attr:`~pipelines.sweep.outcome.RateResult.schedule`) as its child run's
#: metrics (``step`` = epoch) and the results table's columns: the rate and reg_param its models after the epoch
#: were trained at, and the point (index in the round's grid) it copied them from.
LINEAGE_COLUMNS = {"learning_rate": "effective_learning_rate", "reg_param": "effective_reg_param",
                   "pbt_exploited_from": "pbt_exploited_from"}


@dataclass(frozen=True)
class Exploit:
    """One ranking's decision: ``targets`` take the models of ``sources`` after ``epoch`` and then train at
    ``learning_rates``/``reg_params``/``l1_ratios`` (all ``(n,)``, aligned, targets ascending)."""

    epoch: int
    targets: IntArray
    sources: IntArray
    learning_rates: FloatArray
    reg_params: FloatArray
    l1_ratios: FloatArray


@dataclass
class PopulationBasedTraining:
    """The ranking, exploit and explore rules with the population's current hyperparameters.

    ``learning_rates``/``reg_params``/``l1_ratios`` ``(P,)`` are what each point trains its next epoch with;
    ``rate_range`` the log-uniform resampling range of the rate, ``reg_range`` that of ``reg_param`` (None: not
    explored: the grid does not vary it, or has no positive value).
    """

    interval: int
    quantile: float
    factors: tuple[float, ...]
    resample_probability: float
    seed: int
    epochs: int
    learning_rates: FloatArray
    reg_params: FloatArray
    l1_ratios: FloatArray
    rate_range: tuple[float, float]
    reg_range: tuple[float, float] | None = None

    @classmethod
    def start(cls, learning_rates: Sequence[float], reg_params: Sequence[float], *, interval: int, quantile: float,
              factors: Sequence[float], resample_probability: float, seed: int, epochs: int,
              l1_ratios: Sequence[float] | None = None) -> PopulationBasedTraining:
        """The population of the grid's points (their rates, reg_params and l1_ratios, point order)."""
        rates, regs = np.asarray(learning_rates, np.float64), np.asarray(reg_params, np.float64)
        l1s = np.zeros_like(regs) if l1_ratios is None else np.asarray(l1_ratios, np.float64)
        positive = regs[regs > 0]
        reg_range = (float(positive.min()), float(positive.max())) if np.unique(regs).size > 1 and positive.size \
            else None
        return cls(interval, quantile, tuple(float(f) for f in factors), resample_probability, seed, epochs,
                   rates.copy(), regs.copy(), l1s.copy(), (float(rates.min()), float(rates.max())), reg_range)

    @property
    def n_points(self) -> int:
        return int(self.learning_rates.shape[0])

    def is_ranking(self, epoch: int) -> bool:
        """Whether the points are ranked after ``epoch`` (its copies then get at least one epoch to train)."""
        return epoch >= 1 and epoch % self.interval == 0 and epoch + 2 <= self.epochs

    def observe_initial(self, view: EpochView) -> None:
        return None

    def decide(self, view: EpochView) -> Decision:
        """The ranking's decision as a policy's: the loop applies :attr:`Decision.exploit`."""
        return Decision(exploit=self.rank(view.epoch, view.rates, view.val_loss))

    def rank(self, epoch: int, running: IntArray, val_loss: FloatArray) -> Exploit | None:
        """The exploit and explore decision after ``epoch`` (``running`` points and their validation losses,
        aligned); None when ``epoch`` is not a ranking or no running point has a finite loss. The population's
        values change when the loop applies it (:meth:`adopt`)."""
        if not self.is_ranking(epoch):
            return None
        finite = np.isfinite(val_loss)
        if not finite.any():
            return None
        count = max(1, math.floor(self.quantile * self.n_points))
        order = np.lexsort((running, np.where(finite, val_loss, np.inf)))
        sources_pool = running[order[:count]][finite[order[:count]]]
        worst = running[order[::-1][:count]]
        stopped = np.setdiff1d(np.arange(self.n_points), running)
        targets = np.setdiff1d(np.union1d(worst, stopped), sources_pool)
        if not targets.size:
            return None
        rng = np.random.default_rng([self.seed, epoch])
        sources = np.sort(sources_pool)[rng.integers(0, sources_pool.size, size=targets.size)]
        rates = np.array([self._explore(rng, self.learning_rates[s], self.rate_range) for s in sources])
        regs = np.array([self._explore(rng, self.reg_params[s], self.reg_range) if self.reg_range is not None
                         else self.reg_params[s] for s in sources])
        return Exploit(epoch + 1, targets.astype(np.int64), sources.astype(np.int64), rates, regs,
                       self.l1_ratios[sources].copy())

    def adopt(self, exploit: Exploit) -> None:
        """The targets train at their explored values from now on."""
        self.learning_rates[exploit.targets] = exploit.learning_rates
        self.reg_params[exploit.targets] = exploit.reg_params
        self.l1_ratios[exploit.targets] = exploit.l1_ratios

    def _explore(self, rng: np.random.Generator, value: float, bounds: tuple[float, float] | None) -> float:
        """``value`` times a drawn factor, or (with ``resample_probability``) a log-uniform draw in ``bounds``.

        Both draws are taken every time, so the stream's use does not depend on the branch.
        """
        resample = rng.random() < self.resample_probability
        factor = self.factors[int(rng.integers(0, len(self.factors)))]
        drawn = math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))) if bounds is not None else value
        return float(drawn if resample and bounds is not None else value * factor)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"learning_rates": self.learning_rates, "reg_params": self.reg_params, "l1_ratios": self.l1_ratios}

    def load_arrays(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        self.learning_rates = np.asarray(arrays["learning_rates"], dtype=np.float64).copy()
        self.reg_params = np.asarray(arrays["reg_params"], dtype=np.float64).copy()
        self.l1_ratios = np.asarray(arrays["l1_ratios"], dtype=np.float64).copy()


@dataclass(frozen=True)
class LineagePath:
    """The path of one point's models up to ``epoch``: ``holders[e]`` held them after epoch ``e``
    (``e = 0..epoch``), ``learning_rates[e - 1]``/``reg_params[e - 1]`` trained epoch ``e``; ``exploits`` lists
    ``(epoch, target, source)`` for every copy on the way."""

    point: int
    epoch: int
    holders: IntArray  # (epoch + 1,)
    learning_rates: FloatArray  # (epoch,)
    reg_params: FloatArray  # (epoch,)
    exploits: tuple[tuple[int, int, int], ...]

    def schedule(self) -> dict[str, list[float] | list[int]]:
        """The rates as a ``piecewise`` schedule: the first epoch of each run of equal rates and its rate."""
        starts = [index for index in range(self.learning_rates.size)
                  if index == 0 or self.learning_rates[index] != self.learning_rates[index - 1]]
        return {"epochs": [index + 1 for index in starts],
                "rates": [float(self.learning_rates[index]) for index in starts]}


def winner_schedule(path: LineagePath, labels: Sequence[str]) -> dict[str, object]:
    """The winner's lineage as the parent's JSON artifact: its rates per epoch, the copies on the way and the
    settings that replay it as a single-rate sweep (``train.schedule: piecewise``, ``sweep.learning_rates: [1.0]``:
    a piecewise rate is a multiplier of the point's rate)."""
    schedule = path.schedule()
    return {
        "point": labels[path.point], "kept_epoch": path.epoch,
        "learning_rates": [float(rate) for rate in path.learning_rates],
        "reg_params": [float(reg) for reg in path.reg_params],
        "exploits": [{"epoch": epoch, "point": labels[target], "from": labels[source]}
                     for epoch, target, source in path.exploits],
        "replay": {"train.schedule": {"name": "piecewise", **schedule}, "train.epochs": path.epoch,
                   "sweep.learning_rates": [1.0], "sweep.strategy": "grid"},
    }


@dataclass
class Lineage:
    """Each point's history under population-based training, epoch by epoch (``(E + 1, P)`` arrays, row 0 the
    initial models).

    ``learning_rates[e, p]``/``reg_params[e, p]`` trained the models ``p`` holds after epoch ``e`` (NaN: ``p``
    did not train it, stopped); ``origin[e, p]`` is the point whose training produced them (``p``, the source of
    an exploit, or -1); ``exploited_from[e, p]`` the source when ``p`` took a copy after epoch ``e`` (-1: none).
    """

    epochs: int
    n_points: int
    learning_rates: FloatArray = field(init=False)
    reg_params: FloatArray = field(init=False)
    origin: IntArray = field(init=False)
    exploited_from: IntArray = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.epochs + 1, self.n_points)
        self.learning_rates, self.reg_params = np.full(shape, np.nan), np.full(shape, np.nan)
        self.origin = np.full(shape, -1, dtype=np.int64)
        self.origin[0] = np.arange(self.n_points)
        self.exploited_from = np.full(shape, -1, dtype=np.int64)

    def trained(self, epoch: int, points: IntArray, learning_rates: FloatArray, reg_params: FloatArray) -> None:
        """``points`` trained ``epoch`` at these rates (aligned with ``points``)."""
        self.learning_rates[epoch, points], self.reg_params[epoch, points] = learning_rates, reg_params
        self.origin[epoch, points] = points

    def exploited(self, exploit: Exploit) -> None:
        """The targets hold their sources' models of ``exploit.epoch`` (and their history of that epoch)."""
        epoch, targets, sources = exploit.epoch, exploit.targets, exploit.sources
        self.learning_rates[epoch, targets] = self.learning_rates[epoch, sources]
        self.reg_params[epoch, targets] = self.reg_params[epoch, sources]
        self.origin[epoch, targets] = self.origin[epoch, sources]
        self.exploited_from[epoch, targets] = sources

    def path(self, point: int, epoch: int) -> LineagePath:
        """The lineage of the models ``point`` holds after ``epoch`` (see :class:`LineagePath`)."""
        holders = np.zeros(epoch + 1, dtype=np.int64)
        rates, regs = np.zeros(epoch), np.zeros(epoch)
        exploits = []
        holder = point
        for at in range(epoch, 0, -1):
            holders[at] = holder
            rates[at - 1], regs[at - 1] = self.learning_rates[at, holder], self.reg_params[at, holder]
            trainer = int(self.origin[at, holder])
            if trainer < 0:
                raise ValueError(f"point {holder} holds no trained models after epoch {at}")
            if self.exploited_from[at, holder] >= 0:
                exploits.append((at, holder, int(self.exploited_from[at, holder])))
            holder = trainer
        holders[0] = holder
        return LineagePath(point, epoch, holders, rates, regs, tuple(reversed(exploits)))

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        return {"learning_rates": self.learning_rates.copy(), "reg_params": self.reg_params.copy(),
                "origin": self.origin.copy(), "exploited_from": self.exploited_from.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> Lineage:
        learning_rates = np.asarray(arrays["learning_rates"], dtype=np.float64)
        lineage = cls(learning_rates.shape[0] - 1, learning_rates.shape[1])
        lineage.learning_rates = learning_rates.copy()
        lineage.reg_params = np.asarray(arrays["reg_params"], dtype=np.float64).copy()
        lineage.origin = np.asarray(arrays["origin"], dtype=np.int64).copy()
        lineage.exploited_from = np.asarray(arrays["exploited_from"], dtype=np.int64).copy()
        return lineage

