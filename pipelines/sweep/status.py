"""The registry of a learning rate's statuses in a sweep: every layer names them from here.

A rate is ``running`` until a policy stops it or the last epoch ends; then it has exactly one final status.
"""

from __future__ import annotations

RUNNING = "running"
COMPLETED = "completed"
DIVERGED = "diverged"
EARLY_STOPPED = "early_stopped"
PRUNED = "pruned"

FINAL_STATUSES: tuple[str, ...] = (COMPLETED, DIVERGED, EARLY_STOPPED, PRUNED)
"""Statuses a rate can end with (child-run tags, the results table's ``status``, the parent's counts)."""

SELECTABLE_STATUSES: tuple[str, ...] = (COMPLETED, EARLY_STOPPED)
"""Statuses whose kept model may be chosen as the sweep's best: they were not stopped for being bad."""
