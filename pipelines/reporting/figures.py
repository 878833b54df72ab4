"""Matplotlib figures of a sweep, built on :class:`matplotlib.figure.Figure` (no pyplot global state)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from pipelines.reporting.tables import rate_label
from pipelines.sweep.grid import varying_axes
from pipelines.sweep.outcome import GridOutcome
from pipelines.sweep.range_test import SUGGESTION_RULE, RangeTestResult
from pipelines.sweep.status import DIVERGED


def loss_curves_figure(outcome: GridOutcome, loss: str) -> Figure:
    """Every rate's training (solid) and validation (dashed) loss per epoch on one log-y plot.

    Non-finite and non-positive values are left out (a diverged rate's curve stops at its last
    finite point; a rate without any stays in the legend, with its status).
    """
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.add_subplot()
    colors = _colors(len(outcome.rates))
    epochs = np.arange(1, outcome.epochs + 1)
    for rate, label, color in zip(outcome.rates, outcome.labels, colors, strict=True):
        for name, style in (("train_loss", "-"), ("val_loss", "--")):
            curve = rate.curves[name]
            shown = np.isfinite(curve) & (curve > 0)  # none at all: the rate stays in the legend, with its status
            axes.plot(epochs[shown], curve[shown], style, color=color, marker=".",
                      label=f"{label} ({rate.status})" if name == "train_loss" else None)
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{loss} loss (solid: train, dashed: validation)")
    axes.set_title("Loss curves per grid point")
    axes.legend(fontsize="small", ncols=2)
    axes.grid(True, which="both", alpha=0.3)
    return figure


def pbt_learning_rates_figure(outcome: GridOutcome) -> Figure | None:
    """Population-based training: every point's learning rate per epoch (the rate its models after the epoch were
    trained at, log y), each copy marked where it lands (an x at the epoch and the copied lineage's rate, joined to
    the point's previous rate by a dotted jump), the winner's lineage drawn over them in black; None for a grid."""
    if outcome.lineage is None:
        return None
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.add_subplot()
    epochs = np.arange(1, outcome.epochs + 1)
    for rate, label, color in zip(outcome.rates, outcome.labels, _colors(len(outcome.rates)), strict=True):
        rates, copied = rate.schedule["learning_rate"], rate.schedule["pbt_exploited_from"]
        shown = np.isfinite(rates)
        axes.plot(epochs[shown], rates[shown], "-", color=color, marker=".", label=label, alpha=0.8)
        for index in np.flatnonzero(np.isfinite(copied)):
            axes.plot([epochs[index]], [rates[index]], "x", color=color, markersize=9, markeredgewidth=2)
            previous = rates[:index][np.isfinite(rates[:index])]
            if previous.size:
                axes.plot([epochs[index] - 1, epochs[index]], [previous[-1], rates[index]], ":", color=color)
    best = outcome.best_index
    if best is not None and outcome.rates[best].kept_epoch >= 1:
        path = outcome.lineage.path(best, outcome.rates[best].kept_epoch)
        axes.step(np.arange(1, path.epoch + 1), path.learning_rates, where="mid", color="black", linewidth=2.2,
                  label=f"winner's lineage ({outcome.labels[best]}, {len(path.exploits)} copies)")
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate of the epoch's models")
    axes.set_title("Population-based training: learning rate per point (x: copied from a better point)")
    axes.legend(fontsize="small", ncols=2)
    axes.grid(True, which="both", alpha=0.3)
    return figure


def val_loss_vs_rate_figure(outcome: GridOutcome) -> Figure:
    """Validation loss at each point's kept epoch against the learning rate (log x), one line per penalty of
    a joint grid.

    Diverged points are marked with a red ``x`` on the top edge; the best point with a star.
    """
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    rates = np.array([r.learning_rate for r in outcome.rates])
    val_loss = np.array([r.final_metrics().get("val_loss", np.nan) for r in outcome.rates])
    usable = np.array([r.status != DIVERGED for r in outcome.rates]) & np.isfinite(val_loss)
    penalties = [(r.reg_param, r.l1_ratio) for r in outcome.rates]
    show_reg, show_l1 = varying_axes([r.point for r in outcome.rates])
    for penalty in dict.fromkeys(penalties):
        line = usable & np.array([p == penalty for p in penalties])
        name = " ".join([*([f"reg={penalty[0]:.4g}"] if show_reg else []), *([f"l1={penalty[1]:.4g}"] if show_l1
                                                                             else [])])
        axes.plot(rates[line], val_loss[line], "o-", label=f"final validation loss {name}".rstrip())
    if (~usable).any():
        top = np.nanmax(val_loss[usable]) if usable.any() else 1.0
        axes.plot(rates[~usable], np.full(int((~usable).sum()), top), "x", color="red", markersize=10,
                  label="diverged")
    best = outcome.best_index
    if best is not None:
        axes.plot([rates[best]], [val_loss[best]], "*", color="gold", markersize=16, markeredgecolor="black",
                  label=f"best {outcome.labels[best]}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("validation loss")
    axes.set_title("Final validation loss vs learning rate")
    axes.legend(fontsize="small")
    axes.grid(True, which="both", alpha=0.3)
    return figure


def range_test_figure(result: RangeTestResult) -> Figure:
    """The range test: smoothed (and, faint, raw) mini-batch loss against the learning rate (log x).

    The minimum smoothed loss and the suggested rate are marked with vertical lines; non-finite values are
    left out.
    """
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    rates = result.learning_rates
    raw = np.isfinite(result.losses)
    axes.plot(rates[raw], result.losses[raw], alpha=0.3, linewidth=1.0, label="raw loss")
    smoothed = np.isfinite(result.smoothed_losses)
    axes.plot(rates[smoothed], result.smoothed_losses[smoothed], linewidth=2.0, label="smoothed loss")
    axes.axvline(result.min_loss_rate, color="grey", linestyle=":",
                 label=f"min smoothed loss {rate_label(result.min_loss_rate)}")
    axes.axvline(result.suggestion, color="red", linestyle="--",
                 label=f"suggested {rate_label(result.suggestion)} ({SUGGESTION_RULE})")
    finite = result.smoothed_losses[np.isfinite(result.smoothed_losses)]
    if finite.size:  # keep the diverging tail from flattening the interesting part
        low, high = float(finite.min()), float(finite[0])
        axes.set_ylim(low - 0.1 * (high - low + 1e-12), max(high, low) + 0.3 * (high - low + 1e-12))
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("mini-batch training loss")
    stopped = ", stopped early" if result.stopped_early else ""
    axes.set_title(f"Learning-rate range test ({result.steps} steps{stopped})")
    axes.legend(fontsize="small")
    axes.grid(True, which="both", alpha=0.3)
    return figure


def _colors(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    colormap = colormaps["viridis"]
    return [colormap(x) for x in np.linspace(0.0, 0.9, max(count, 1))][:count]


def penalty_heatmap_figure(outcome: GridOutcome) -> Figure | None:
    """A joint grid's best validation loss over (learning rate, reg_param): one cell per pair, the minimum over
    the other axes (l1_ratio, seeds are already averaged); diverged or never-evaluated cells are blank and
    the best point is outlined. None when the grid has a single reg_param."""
    rates = sorted({r.learning_rate for r in outcome.rates})
    regs = sorted({r.reg_param for r in outcome.rates})
    if len(regs) < 2:
        return None
    values = np.full((len(regs), len(rates)), np.nan)
    for rate in outcome.rates:
        loss = rate.final_metrics().get("val_loss", np.nan) if rate.status != DIVERGED else np.nan
        row, column = regs.index(rate.reg_param), rates.index(rate.learning_rate)
        if np.isfinite(loss) and not loss >= values[row, column]:
            values[row, column] = loss
    figure = Figure(figsize=(1.2 * len(rates) + 3, 0.6 * len(regs) + 2.5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis_r", origin="lower")
    figure.colorbar(image, ax=axes, label="best validation loss")
    for row in range(len(regs)):
        for column in range(len(rates)):
            if np.isfinite(values[row, column]):
                axes.text(column, row, f"{values[row, column]:.4g}", ha="center", va="center", fontsize="x-small",
                          color="white")
    best = outcome.best
    if best is not None:
        axes.add_patch(Rectangle((rates.index(best.learning_rate) - 0.5, regs.index(best.reg_param) - 0.5), 1, 1,
                                 fill=False, edgecolor="red", linewidth=2))
    axes.set_xticks(range(len(rates)), [f"{rate:.3g}" for rate in rates], rotation=45)
    axes.set_yticks(range(len(regs)), [f"{reg:.3g}" for reg in regs])
    axes.set_xlabel("learning rate")
    axes.set_ylabel("reg_param")
    axes.set_title("Best validation loss over (learning rate, reg_param)")
    return figure


def learning_rate_history_figure(history: pd.DataFrame) -> Figure:
    """The best learning rate and its validation loss per sweep of a table, oldest table version first
    (rows of :func:`~pipelines.lakehouse.history.history_sql`); a filled marker where the best point became the
    champion, a hollow one where the champion stayed (or nothing was registered)."""
    figure = Figure(figsize=(8, 5.5))
    rate_axes, loss_axes = figure.subplots(2, 1, sharex=True)
    x = np.arange(len(history))
    registered = np.array([str(decision or "").startswith("registered") for decision in history["registration"]],
                          dtype=bool)
    for axes, column, label in ((rate_axes, "best_learning_rate", "best learning rate"),
                                (loss_axes, "best_val_loss", "its validation loss")):
        values = history[column].to_numpy(dtype=float)
        axes.plot(x, values, color="0.6", linewidth=1, zorder=1)
        axes.scatter(x[registered], values[registered], color="C0", zorder=2, label="became champion")
        axes.scatter(x[~registered], values[~registered], facecolors="none", edgecolors="C0", zorder=2,
                     label="champion stayed / not registered")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    rate_axes.set_yscale("log")
    rate_axes.legend(loc="best", fontsize="small")
    ranges = [f"v{int(v)}" if s is None or pd.isna(s) else f"v{int(s) + 1}-{int(v)}"
              for v, s in zip(history["data_version"], history["data_since_version"], strict=True)]
    loss_axes.set_xticks(x, [f"{r}\n{str(sweep)[:10]}" for r, sweep in zip(ranges, history["sweep_id"], strict=True)],
                         fontsize="small")
    loss_axes.set_xlabel("table version and sweep")
    rate_axes.set_title("The learning rate's history across table versions")
    figure.tight_layout()
    return figure
