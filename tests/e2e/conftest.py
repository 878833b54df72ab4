"""Fixtures of the end-to-end tests: one standalone cluster for the modules that submit to one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import bare_python, standalone_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone master and two one-core workers on 127.0.0.1 whose own Python has nothing installed (no
    lrsweep, no numpy): a job must name its executors' Python or ship one. Yields the master URL."""
    work = tmp_path_factory.mktemp("cluster")
    with standalone_cluster(work, bare_python(work / "bare-python")) as master:
        yield master
