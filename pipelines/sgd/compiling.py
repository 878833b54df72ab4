"""How the compiled (numba) kernels are built, and the steps every compiled epoch shares.

* :func:`compile_kernel`: numba with strict IEEE math, numpy's error model (a division by zero is ``inf`` or
  NaN, as in numpy, not an exception: the check would keep the compiler from vectorizing a loop that divides) and
  every function it calls inlined (the rules and :mod:`pipelines.sgd.elementary`'s functions, which a loop over a
  batch's rows vectorizes only when inlined; both settings pass down to the callees), its machine code cached on
  disk keyed by the rules it compiles in (:class:`RuleCache`);
* :func:`jitable`: a rule written once in Python (a loss's scalar rule, an optimizer's update rule) made callable
  from compiled code;
* :func:`gather_batch`: a batch's rows of a dense block, gathered and transposed;
* :func:`batch_rule`: a loss's rule at a tile of model rows' margins of a batch, and the sums of its derivatives and
  losses, for the dense (:mod:`pipelines.sgd.fused`) and sparse (:mod:`pipelines.sgd.fused_sparse`) epochs;
* :func:`row_update`: one model row's optimizer step with its penalty terms, element by element: the update of
  the dense, multinomial (:mod:`pipelines.sgd.fused_multinomial`) and sparse epochs alike.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from types import CodeType
from typing import Any

import numpy as np
from numba import njit
from numba.core.caching import FunctionCache
from numba.extending import register_jitable

from pipelines.sgd import elementary
from pipelines.sgd._types import FloatArray
from pipelines.sgd.tiles import TILE


def _code_bytes(code: CodeType) -> bytes:
    """A code object's identity: its bytecode, names and constants (nested code objects alike). Not
    ``marshal.dumps``, whose output follows the objects' reference counts and so changes within a process."""
    constants = b",".join(_code_bytes(constant) if isinstance(constant, CodeType) else repr(constant).encode()
                          for constant in code.co_consts)
    return b"|".join([code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode(), constants])


def _described(value: Any) -> bytes:
    """Bytes that identify a kernel's closure value the same way in every process: a function by its module, name,
    bytecode and own closure (a generated rule, e.g. :func:`row_update`'s, is a closure: numba's pickle of it
    differs between processes, so its key never matched a cached kernel), a tuple by its items, anything else by
    its ``repr`` (the flags and numbers closures hold)."""
    if callable(value) and hasattr(value, "__code__"):
        cells = value.__closure__ or ()
        return b"|".join([f"{value.__module__}.{value.__qualname__}".encode(), _code_bytes(value.__code__),
                          *(_described(cell.cell_contents) for cell in cells)])
    if isinstance(value, tuple):
        return b"(" + b",".join(_described(item) for item in value) + b")"
    return repr(value).encode()


#: How every kernel is compiled (part of the cache key: machine code compiled with other options is not loaded).
JIT_OPTIONS: dict[str, Any] = {"nogil": True, "error_model": "numpy", "forceinline": True}


class RuleCache(FunctionCache):
    """numba keys a cached kernel by its own bytecode and its closure's pickle, which names the rules but does not
    hold their code (they live in other files), and which differs between processes where the closure holds a
    generated rule: here the closure is described by :func:`_described` (its rules' names, bytecode and flags) and
    the bytecode of ``rules`` (every function it compiles in) joins the key, so an edited rule compiles anew
    instead of loading stale machine code, and each process finds the machine code the first one cached."""

    def __init__(self, py_func: Callable[..., Any], rules: tuple[Callable[..., Any], ...]) -> None:
        super().__init__(py_func)
        self._rules_key = hashlib.sha256(b"".join(_code_bytes(rule.__code__) for rule in rules)).hexdigest()

    def _index_key(self, sig: Any, codegen: Any) -> tuple[Any, ...]:
        function = self._py_func
        closure = tuple(cell.cell_contents for cell in function.__closure__ or ())
        return (sig, codegen.magic_tuple(), (hashlib.sha256(function.__code__.co_code).hexdigest(),
                                             hashlib.sha256(_described(closure)).hexdigest()), self._rules_key,
                repr(sorted(JIT_OPTIONS.items())))


def compile_kernel(function: Callable[..., Any], rules: tuple[Callable[..., Any], ...] = ()) -> Any:
    """``function`` compiled by numba, its machine code cached on disk for the next processes (Spark's Python
    workers) where a cache location is writable, else compiled once per process; ``rules``: the functions from
    other modules it compiles in (the elementary functions the losses' rules call are always in the key)."""
    dispatcher = njit(**JIT_OPTIONS)(function)
    with contextlib.suppress(RuntimeError):  # RuntimeError: no writable cache location (a read-only install)
        dispatcher._cache = RuleCache(function, (*rules, *elementary.FUNCTIONS))  # numba's cache slot
    return dispatcher


@functools.cache
def jitable(rule: Callable[..., Any]) -> Callable[..., Any]:
    """``rule`` made callable from compiled code (registered once per process)."""
    registered: Callable[..., Any] = register_jitable(rule)
    return registered


def named_for(function: Callable[..., Any], *rules: Any) -> Callable[..., Any]:
    """``function``, a rule generated in a closure, renamed after what it closes over (``rules``: functions and
    flags). numba names a compiled function by its qualified name and a per-process counter, and a kernel loaded
    from the disk cache calls its inner functions by those names: two generated rules of one name (the update of
    momentum and of sgd) loaded into one process could call each other's machine code (wrong steps, and writes
    past a smaller optimizer state). With the rules in the name, one name is one rule."""
    parts = [getattr(rule, "__qualname__", repr(rule)) for rule in rules]
    function.__qualname__ = f"{function.__qualname__}__{'__'.join(parts)}".replace(".", "_").replace("<", "") \
        .replace(">", "")
    function.__name__ = function.__qualname__
    return function


@register_jitable
def gather_batch(X: FloatArray, y: FloatArray, sample_weight: FloatArray, order: Any, start: int, rows: int,
                 gathered: FloatArray, transposed: FloatArray, labels: FloatArray,
                 row_weights: FloatArray) -> None:  # pragma: no cover - compiled
    """Rows ``order[start : start + rows]`` of ``X`` into ``gathered`` ``(B, d)`` (widened to float64) and
    ``transposed`` ``(d, B)``, their labels and (``sample_weight`` not empty) weights."""
    d = X.shape[1]
    weighted = sample_weight.shape[0] > 0
    for i in range(rows):
        source = order[start + i]
        labels[i] = y[source]
        if weighted:
            row_weights[i] = sample_weight[source]
        for j in range(d):
            gathered[i, j] = X[source, j]
    if d <= 64:  # a second, cache-resident pass (writing both at once measured 30% slower)
        for j in range(d):
            for i in range(rows):
                transposed[j, i] = gathered[i, j]
        return
    # wide rows: eight rows at a time, so each input's eight values fill one cache line of ``transposed`` while the
    # eight rows' pages stay in the TLB (a whole column of the batch's rows at a time, each row a page apart,
    # missed the TLB at every read: at 512 inputs the transposition cost 2.6 times the gather)
    for first in range(0, rows, 8):
        last = min(first + 8, rows)
        for j in range(d):
            for i in range(first, last):
                transposed[j, i] = gathered[i, j]


def by_column_buffer(weights: FloatArray, first_column: int, hold: bool) -> FloatArray:
    """An empty array for :func:`held_by_column`: ``(columns from first_column on, n_models)`` when ``hold``, else of
    no rows. Allocated here rather than in the compiled pass: numpy asks Linux for transparent huge pages for its
    large arrays, and a pass over sparse rows reads this one at random columns, which on 4 KiB pages miss the TLB
    (16 MiB of weights, 2M random reads: 35 -> 25 ms)."""
    n_models, width = weights.shape
    return np.empty((width - first_column if hold else 0, n_models))


@register_jitable
def held_by_column(weights: FloatArray, first_column: int, by_column: FloatArray) -> None:  # pragma: no cover
    """``by_column[c, k] = weights[k, first_column + c]``: a wide model's sparse weights with every model row's weight
    of a column side by side (one cache line for a non-zero's weights of all the rows), for the passes over sparse
    rows; ``by_column`` from :func:`by_column_buffer`."""
    for k in range(weights.shape[0]):
        for c in range(by_column.shape[0]):
            by_column[c, k] = weights[k, first_column + c]


@functools.cache
def batch_rule(margin_at: Callable[..., Any]) -> Callable[..., Any]:
    """A loss's rule at one margin (``margin_at``: ``(loss or 0, dloss/dm)``, :func:`pipelines.sgd.fused.margin_rule`)
    over a tile of model rows' margins of a batch, compiled into the epochs.

    ``derivatives_and_losses(margins, labels, row_weights, weighted, rows, tile, epsilon, derivatives, losses,
    totals)`` writes ``derivatives[t, i]`` and ``losses[t, i]`` (each times ``row_weights[i]`` where ``weighted``)
    for the first ``tile`` model rows (:data:`~pipelines.sgd.tiles.TILE` or 1) and ``rows`` margins, and
    their sums ``totals[0, t] = sum_i derivatives[t, i]``, ``totals[1, t] = sum_i losses[t, i]``, the rows in batch
    order. The rule runs in a loop without a sum, which the compiler vectorizes (the rule and its elementary
    functions inlined); the sums follow in a loop of their own, so their order is the rows' whatever the vector
    width, and the tile's sums advance side by side (independent chains of additions, each in row order: a row's
    bits are those it has alone).
    """
    rule = jitable(margin_at)

    def derivatives_and_losses(margins: FloatArray, labels: FloatArray, row_weights: FloatArray, weighted: bool,
                               rows: int, tile: int, epsilon: float, derivatives: FloatArray, losses: FloatArray,
                               totals: FloatArray) -> None:  # pragma: no cover - compiled
        for t in range(tile):
            for i in range(rows):
                loss, value = rule(margins[t, i], labels[i], epsilon)
                if weighted:
                    value = value * row_weights[i]
                    loss = loss * row_weights[i]
                derivatives[t, i] = value
                losses[t, i] = loss
        if tile == TILE:
            d0, d1, d2, d3, l0, l1, l2, l3 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            for i in range(rows):
                d0 += derivatives[0, i]
                d1 += derivatives[1, i]
                d2 += derivatives[2, i]
                d3 += derivatives[3, i]
                l0 += losses[0, i]
                l1 += losses[1, i]
                l2 += losses[2, i]
                l3 += losses[3, i]
            totals[0, 0], totals[0, 1], totals[0, 2], totals[0, 3] = d0, d1, d2, d3
            totals[1, 0], totals[1, 1], totals[1, 2], totals[1, 3] = l0, l1, l2, l3
            return
        for t in range(tile):
            total, loss_total = 0.0, 0.0
            for i in range(rows):
                total += derivatives[t, i]
                loss_total += losses[t, i]
            totals[0, t], totals[1, t] = total, loss_total

    return named_for(derivatives_and_losses, margin_at)


@functools.cache
def row_update(update_rule: Callable[..., Any], decoupled_decay: bool) -> Callable[..., Any]:
    """The step of one model row ``k`` by an optimizer's ``update_rule`` (``decoupled_decay``: AdamW's L2 term, a
    decay before the rule, instead of a gradient term), compiled into the epochs.

    ``update_row(weights, k, columns, n_columns, gradient, scale, step_size, step, l1_k, l2_k, slots, constants)``
    moves ``weights[k, c]`` for the ``n_columns`` columns ``c = columns[j]`` (``columns`` empty: ``c = j``) by the
    gradient ``gradient[j] * scale``, the row's slots ``slots[:, k, c]`` with it; the penalty's terms on a row
    whose term is non-zero only (L2 added to the gradient or AdamW's decay; L1 soft thresholding after the step).
    """
    update = jitable(update_rule)

    def update_row(weights: FloatArray, k: int, columns: Any, n_columns: int, gradient: FloatArray, scale: float,
                   step_size: float, step: float, l1_k: float, l2_k: float, slots: FloatArray,
                   constants: Any) -> None:  # pragma: no cover - compiled
        every_column = columns.shape[0] == 0
        if l2_k == 0.0 and l1_k == 0.0:  # no penalty: a loop the compiler vectorizes (plain SGD)
            if every_column:
                for j in range(n_columns):
                    weights[k, j] = update(weights[k, j], gradient[j] * scale, step_size, step, slots, (k, j),
                                           constants)
            else:
                for j in range(n_columns):
                    c = columns[j]
                    weights[k, c] = update(weights[k, c], gradient[j] * scale, step_size, step, slots, (k, c),
                                           constants)
            return
        decay = decoupled_decay and l2_k != 0.0
        smooth = not decoupled_decay and l2_k != 0.0
        for j in range(n_columns):
            c = j if every_column else columns[j]
            grad = gradient[j] * scale
            param = weights[k, c]
            if decay:
                param = param * (1.0 - step_size * l2_k)
            elif smooth:
                grad = grad + l2_k * param
            updated = update(param, grad, step_size, step, slots, (k, c), constants)
            if l1_k != 0.0:
                shrunk = max(abs(updated) - step_size * l1_k, 0.0)
                # sign(w) * shrunk, NaN kept
                updated = shrunk if updated > 0.0 else (-shrunk if updated < 0.0 else updated * shrunk)
            weights[k, c] = updated

    return named_for(update_row, update_rule, decoupled_decay)
