"""The one timing helper: wall time spent in labelled blocks, in total and per label."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Stopwatch:
    """Accumulates the wall time spent inside :meth:`timed` blocks, in total and per label (thread-safe)."""

    seconds: float = 0.0
    by_label: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def timed(self, label: str = "other") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(label, time.perf_counter() - started)

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds
            self.by_label[label] = self.by_label.get(label, 0.0) + seconds
