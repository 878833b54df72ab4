"""How far today's training rows have moved from the rows a model was trained on, per feature column.

The measure is the population stability index (PSI), the symmetric divergence
``sum_i (p_i - q_i) ln(p_i / q_i)`` of two distributions, with its usual reading: below 0.1 stable, 0.1-0.25
a moderate shift, above 0.25 a major one. Both sides come from what encodings keep, so no extra pass over the
data is needed:

* a one-hot column: the shares of the training rows of the categories both sides kept, and the rest as
  one "other" share on each side;
* a dense input (number, boolean, date, array element): its mean and standard deviation, through the normal
  approximation ``((s0^2 - s1^2)^2 + (m0 - m1)^2 (s0^2 + s1^2)) / (2 s0^2 s1^2)`` (the same divergence for
  two normal distributions); an array column takes its largest element's;
* hashed and vector columns keep no statistics, nor do dense inputs under ``features.standardize: false``
  (mean 0, scale 1 recorded): those are not scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.features.encoding import ColumnEncoding, TableEncoding

#: shares below this are floored before the logarithm (a category present on one side only)
_FLOOR = 1e-4


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str
    psi: float
    detail: str  # what moved, e.g. "mean 30.1 -> 36.5, std 12 -> 12.4" or "'gold' 12% -> 31%"


def feature_drift(before: TableEncoding, now: TableEncoding) -> tuple[list[ColumnDrift], list[str]]:
    """Each column both encodings share and can score, largest drift first; and the columns not scored (why)."""
    old = {column.column: column for column in before.columns}
    scored, skipped = [], []
    for column in now.columns:
        previous = old.get(column.column)
        if previous is None or previous.kind != column.kind:
            skipped.append(f"{column.column} (new, or another kind)")
        elif column.kind == "onehot":
            if not previous.shares or not column.shares:
                skipped.append(f"{column.column} (category shares not recorded)")
            else:
                scored.append(_categories(previous, column))
        elif column.is_sparse:
            skipped.append(f"{column.column} ({column.kind}: no statistics)")
        elif previous.width != column.width:
            skipped.append(f"{column.column} (another width)")
        elif _unstandardized(previous) or _unstandardized(column):
            skipped.append(f"{column.column} (not standardized: no moments recorded)")
        else:
            scored.append(_moments(previous, column))
    return sorted(scored, key=lambda d: (-d.psi, d.column)), skipped


def _moments(before: ColumnEncoding, now: ColumnEncoding) -> ColumnDrift:
    worst, detail = 0.0, ""
    for index, (m0, s0, m1, s1) in enumerate(zip(before.means, before.scales, now.means, now.scales, strict=True)):
        psi = _normal_psi(m0, s0, m1, s1)
        if psi >= worst:
            element = f"[{index}] " if now.width > 1 else ""
            worst, detail = psi, f"{element}mean {m0:.4g} -> {m1:.4g}, std {s0:.4g} -> {s1:.4g}"
    return ColumnDrift(now.column, now.kind, worst, detail)


def _unstandardized(column: ColumnEncoding) -> bool:
    """``features.standardize: false`` records mean 0 and scale 1 for every dense input."""
    return all(m == 0.0 for m in column.means) and all(s == 1.0 for s in column.scales)


def _normal_psi(m0: float, s0: float, m1: float, s1: float) -> float:
    v0, v1 = max(s0, 1e-12) ** 2, max(s1, 1e-12) ** 2
    return ((v0 - v1) ** 2 + (m0 - m1) ** 2 * (v0 + v1)) / (2 * v0 * v1)


def _categories(before: ColumnEncoding, now: ColumnEncoding) -> ColumnDrift:
    p, q = _shares(before), _shares(now)
    common = [name for name in q if name in p]  # kept on both sides; the rest counts as "other" on each
    p["<other>"], q["<other>"] = 1.0 - sum(p[c] for c in common), 1.0 - sum(q[c] for c in common)
    psi, moved, largest = 0.0, "", -1.0
    for name in [*common, "<other>"]:
        a, b = max(p[name], _FLOOR), max(q[name], _FLOOR)
        psi += (b - a) * math.log(b / a)
        if abs(b - a) > largest:
            largest, moved = abs(b - a), f"{'other' if name == '<other>' else repr(name)} {a:.1%} -> {b:.1%}"
    return ColumnDrift(now.column, now.kind, psi, moved)


def _shares(encoding: ColumnEncoding) -> dict[str, float]:
    """Kept category -> share (the null category as ``<null>``), without "other"."""
    return {"<null>" if c is None else c: share for c, share in zip(encoding.categories, encoding.shares[:-1],
                                                                    strict=True)}
