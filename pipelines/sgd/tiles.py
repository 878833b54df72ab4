"""The register-tiled products of the compiled mini-batch epochs: a batch's margins and gradient for a tile of
:data:`TILE` model rows at once, so each load of the batch's inputs serves every row of the tile and each load and
store of an accumulator serves :data:`UNROLL` terms.

Every output is one sequential sum in input order, whatever the tile: the margin of model row ``k`` and data row
``i`` is ``((x_i0 w_k0 + x_i1 w_k1) + ...) + x_i,d-1 w_k,d-1`` and the gradient ``g_kj = (((0 + d_k0 x_0j) +
d_k1 x_1j) + ...)``, written as ``(((a + p0) + p1) + p2) + p3`` over :data:`UNROLL` terms, which is the same
sequence of roundings as four ``a += p``. The tiles only change which loads are shared: a row's bits are those of
the row computed alone, so they never depend on which other rows (grid points) share the pass, nor on ``K mod
TILE`` (a remainder row runs the one-row path, the same arithmetic). numba compiles these with strict IEEE
semantics (no reassociation, no contraction into fused multiply-adds).

These are compiled into the epoch kernels (:mod:`pipelines.sgd.fused`, :mod:`pipelines.sgd.fused_multinomial`);
called from Python they run as plain (slow) Python, which the tests use only through the kernels.
"""

from __future__ import annotations

from numba.extending import register_jitable

from pipelines.sgd._types import FloatArray

#: Model rows per tile (four accumulators per input vector: the shape that measured fastest at d = 32 and 512).
TILE = 4
#: Terms added per load and store of an accumulator.
UNROLL = 4


@register_jitable
def tile_margins(transposed: FloatArray, weights: FloatArray, first: int, tile: int, rows: int,
                 margins: FloatArray) -> None:  # pragma: no cover - compiled
    """``margins[t, i] = x_i . w_{first + t}`` (no intercept) for ``t < tile`` (:data:`TILE` or 1) and the batch's
    ``rows`` rows; ``transposed``: the batch's inputs ``(d, B)``; ``margins``: ``(TILE, B)``."""
    d = transposed.shape[0]
    if tile == TILE:
        k0, k1, k2, k3 = first, first + 1, first + 2, first + 3
        w0, w1, w2, w3 = weights[k0, 0], weights[k1, 0], weights[k2, 0], weights[k3, 0]
        for i in range(rows):
            x = transposed[0, i]
            margins[0, i], margins[1, i], margins[2, i], margins[3, i] = x * w0, x * w1, x * w2, x * w3
        j = 1
        while j + UNROLL <= d:
            a0, a1, a2, a3 = weights[k0, j], weights[k0, j + 1], weights[k0, j + 2], weights[k0, j + 3]
            b0, b1, b2, b3 = weights[k1, j], weights[k1, j + 1], weights[k1, j + 2], weights[k1, j + 3]
            c0, c1, c2, c3 = weights[k2, j], weights[k2, j + 1], weights[k2, j + 2], weights[k2, j + 3]
            e0, e1, e2, e3 = weights[k3, j], weights[k3, j + 1], weights[k3, j + 2], weights[k3, j + 3]
            for i in range(rows):
                x0, x1, x2, x3 = transposed[j, i], transposed[j + 1, i], transposed[j + 2, i], transposed[j + 3, i]
                margins[0, i] = (((margins[0, i] + x0 * a0) + x1 * a1) + x2 * a2) + x3 * a3
                margins[1, i] = (((margins[1, i] + x0 * b0) + x1 * b1) + x2 * b2) + x3 * b3
                margins[2, i] = (((margins[2, i] + x0 * c0) + x1 * c1) + x2 * c2) + x3 * c3
                margins[3, i] = (((margins[3, i] + x0 * e0) + x1 * e1) + x2 * e2) + x3 * e3
            j += UNROLL
        while j < d:
            w0, w1, w2, w3 = weights[k0, j], weights[k1, j], weights[k2, j], weights[k3, j]
            for i in range(rows):
                x = transposed[j, i]
                margins[0, i] += x * w0
                margins[1, i] += x * w1
                margins[2, i] += x * w2
                margins[3, i] += x * w3
            j += 1
        return
    w0 = weights[first, 0]
    for i in range(rows):
        margins[0, i] = transposed[0, i] * w0
    j = 1
    while j + UNROLL <= d:
        a0, a1, a2, a3 = weights[first, j], weights[first, j + 1], weights[first, j + 2], weights[first, j + 3]
        for i in range(rows):
            margins[0, i] = (((margins[0, i] + transposed[j, i] * a0) + transposed[j + 1, i] * a1)
                             + transposed[j + 2, i] * a2) + transposed[j + 3, i] * a3
        j += UNROLL
    while j < d:
        w = weights[first, j]
        for i in range(rows):
            margins[0, i] += transposed[j, i] * w
        j += 1


@register_jitable
def tile_gradient(gathered: FloatArray, derivatives: FloatArray, tile: int, rows: int,
                  gradient: FloatArray) -> None:  # pragma: no cover - compiled
    """``gradient[t, j] = sum_i derivatives[t, i] x_ij`` (from 0.0, the batch's rows in order) for ``t < tile``
    (:data:`TILE` or 1); ``gathered``: the batch's inputs ``(B, d)``; ``derivatives`` ``(TILE, B)``; ``gradient``
    ``(TILE, d)``."""
    d = gathered.shape[1]
    for t in range(tile):
        for j in range(d):
            gradient[t, j] = 0.0
    i = 0
    if tile == TILE:
        while i + UNROLL <= rows:
            a0, a1, a2, a3 = derivatives[0, i], derivatives[0, i + 1], derivatives[0, i + 2], derivatives[0, i + 3]
            b0, b1, b2, b3 = derivatives[1, i], derivatives[1, i + 1], derivatives[1, i + 2], derivatives[1, i + 3]
            c0, c1, c2, c3 = derivatives[2, i], derivatives[2, i + 1], derivatives[2, i + 2], derivatives[2, i + 3]
            e0, e1, e2, e3 = derivatives[3, i], derivatives[3, i + 1], derivatives[3, i + 2], derivatives[3, i + 3]
            for j in range(d):
                x0, x1, x2, x3 = gathered[i, j], gathered[i + 1, j], gathered[i + 2, j], gathered[i + 3, j]
                gradient[0, j] = (((gradient[0, j] + a0 * x0) + a1 * x1) + a2 * x2) + a3 * x3
                gradient[1, j] = (((gradient[1, j] + b0 * x0) + b1 * x1) + b2 * x2) + b3 * x3
                gradient[2, j] = (((gradient[2, j] + c0 * x0) + c1 * x1) + c2 * x2) + c3 * x3
                gradient[3, j] = (((gradient[3, j] + e0 * x0) + e1 * x1) + e2 * x2) + e3 * x3
            i += UNROLL
        while i < rows:
            v0, v1, v2, v3 = derivatives[0, i], derivatives[1, i], derivatives[2, i], derivatives[3, i]
            for j in range(d):
                x = gathered[i, j]
                gradient[0, j] += v0 * x
                gradient[1, j] += v1 * x
                gradient[2, j] += v2 * x
                gradient[3, j] += v3 * x
            i += 1
        return
    while i + UNROLL <= rows:
        a0, a1, a2, a3 = derivatives[0, i], derivatives[0, i + 1], derivatives[0, i + 2], derivatives[0, i + 3]
        for j in range(d):
            gradient[0, j] = (((gradient[0, j] + a0 * gathered[i, j]) + a1 * gathered[i + 1, j])
                              + a2 * gathered[i + 2, j]) + a3 * gathered[i + 3, j]
        i += UNROLL
    while i < rows:
        value = derivatives[0, i]
        for j in range(d):
            gradient[0, j] += value * gathered[i, j]
        i += 1
