"""Figures and summary tables of a sweep: pure functions of its results, no I/O."""
