"""The sweep lease on a real local filesystem through pyarrow.fs: one holder at a time, named to whoever is refused,
taken over once expired, renewed, released; a holder that was taken over learns it; threads and processes racing
for one lease never both win."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.errors import LeaseLostError, OutputError, SweepLockedError
from pipelines.lakehouse.lease import LeaseRecord, LeaseStore, SweepLease

SWEEP = "nightly"


def _current(store: LeaseStore, sweep: str) -> LeaseRecord:
    record = store.current(sweep)
    assert record is not None
    return record


class Clock:
    """A wall clock the test moves (the lease's times are wall-clock seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_first_job_takes_the_lease_and_the_file_names_it(tmp_path: Path) -> None:
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=60, renew=False)
    written = json.loads((tmp_path / SWEEP / "lease-00000001.json").read_text())
    assert written["host"] == socket.gethostname() and written["pid"] == os.getpid()
    assert written["token"] == lease.record.token and len(written["token"]) == 32
    assert written["renewed"] + written["ttl"] == pytest.approx(time.time() + 60, abs=5)
    assert not written["released"]
    lease.release()


def test_a_second_job_is_refused_with_the_holder_named_in_one_line(tmp_path: Path) -> None:
    clock = Clock()
    first = LeaseStore(str(tmp_path)).acquire(SWEEP, ttl=60, renew=False, clock=clock)
    clock.now += 10
    with pytest.raises(SweepLockedError) as refused:
        LeaseStore(f"file://{tmp_path}").acquire(SWEEP, ttl=60, renew=False, clock=clock)
    line = str(refused.value)
    assert "\n" not in line and refused.value.exit_code == 2
    assert f"sweep.id '{SWEEP}' is held by another job: {socket.gethostname()}/{os.getpid()} started " \
           "2027-01-15T08:00:00Z, lease renewed 10 s ago, expires 2027-01-15T08:01:00Z (in 50 s)" in line
    assert first.record.generation == 1 and _current(LeaseStore(str(tmp_path)), SWEEP).token == first.record.token


def test_an_expired_lease_is_taken_over_with_a_line_saying_so(tmp_path: Path) -> None:
    clock = Clock()
    store = LeaseStore(str(tmp_path))
    stale = store.acquire(SWEEP, ttl=60, renew=False, clock=clock)  # its job was SIGKILLed: no more renewals
    clock.now += 75
    said: list[str] = []
    taker = store.acquire(SWEEP, ttl=60, say=said.append, renew=False, clock=clock)
    assert said == [f"lease: sweep {SWEEP}: taking over from {socket.gethostname()}/{os.getpid()} started "
                    "2027-01-15T08:00:00Z, last renewed 75 s ago (expired 15 s ago)"]
    assert taker.record.generation == 2
    assert sorted(p.name for p in (tmp_path / SWEEP).iterdir()) == ["lease-00000002.json"]  # older ones cleaned
    with pytest.raises(LeaseLostError, match=r"lost its lease \(taken over by .* started 2027-01-15T08:01:15Z\)"):
        stale.check()
    stale.release()  # the loser's release leaves the taker's lease alone
    assert _current(store, SWEEP).token == taker.record.token and not _current(store, SWEEP).released


def test_renewing_keeps_the_lease_live_past_its_first_expiry(tmp_path: Path) -> None:
    clock = Clock()
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    for _ in range(4):
        clock.now += 40
        lease.renew()
    assert _current(store, SWEEP).renewed == clock.now
    with pytest.raises(SweepLockedError, match="lease renewed 0 s ago"):
        store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    lease.check()  # still ours


def test_a_released_lease_is_taken_without_a_takeover_line(tmp_path: Path) -> None:
    store = LeaseStore(str(tmp_path))
    with store.acquire(SWEEP, ttl=60, renew=False) as first:
        pass
    assert _current(store, SWEEP).released and _current(store, SWEEP).token == first.record.token
    said: list[str] = []
    second = store.acquire(SWEEP, ttl=60, say=said.append, renew=False)
    assert said == [] and second.record.generation == 2  # generations only grow: no ABA between takers
    second.release()


def test_a_lease_is_released_when_the_block_ends_with_an_error(tmp_path: Path) -> None:
    store = LeaseStore(str(tmp_path))
    with pytest.raises(RuntimeError), store.acquire(SWEEP, ttl=60):
        raise RuntimeError("training failed")
    assert _current(store, SWEEP).released


def test_the_renewer_thread_renews_and_notices_a_takeover(tmp_path: Path) -> None:
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=0.6)  # renewed every 0.2 s
    first_expiry = lease.record.expires
    time.sleep(1.0)
    assert _current(store, SWEEP).expires > first_expiry + 0.5 and lease.lost is None
    lease.check()
    # another job takes over (as after this one had been paused past the ttl): the renewer stops the job
    taken = _current(store, SWEEP)
    assert taken is not None
    intruder = json.loads(taken.payload())
    intruder.update(host="other-host", pid=4242, token="f" * 32, renewed=time.time())
    (tmp_path / SWEEP / "lease-00000002.json").write_text(json.dumps(intruder))
    deadline = time.monotonic() + 3
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost is not None and lease.lost.startswith("taken over by other-host/4242 started ")
    with pytest.raises(LeaseLostError, match="other-host/4242"):
        lease.check()
    lease.release()
    assert _current(store, SWEEP).host == "other-host" and not _current(store, SWEEP).released


def test_a_check_asks_the_store_without_waiting_for_the_renewer(tmp_path: Path) -> None:
    clock = Clock()
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    lease.check()
    clock.now += 120  # this job was paused; another took over meanwhile; the lease's time alone cannot tell
    store.acquire(SWEEP, ttl=60, say=lambda line: None, renew=False, clock=clock)
    clock.now -= 119
    with pytest.raises(LeaseLostError, match="taken over by"):
        lease.check()


def test_a_holder_whose_file_was_replaced_learns_it_at_renewal(tmp_path: Path) -> None:
    """The object-store race's other half: a later writer overwrote this job's generation."""
    store = LeaseStore(str(tmp_path), exclusive=False, settle_seconds=0.0)
    lease = store.acquire(SWEEP, ttl=60, renew=False)
    record = json.loads((tmp_path / SWEEP / "lease-00000001.json").read_text())
    record.update(host="other-host", pid=7, token="e" * 32)
    (tmp_path / SWEEP / "lease-00000001.json").write_text(json.dumps(record))
    lease.renew()
    with pytest.raises(LeaseLostError, match="taken over by other-host/7"):
        lease.check()


def test_a_lease_not_renewed_past_its_expiry_is_checked_again_before_the_job_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    clock.now += 500  # the process was paused: nobody took over, so the check renews and the job goes on
    lease.check()
    assert _current(store, SWEEP).renewed == clock.now


def test_the_object_store_path_takes_refuses_and_takes_over(tmp_path: Path) -> None:
    clock = Clock()
    store = LeaseStore(str(tmp_path), exclusive=False, settle_seconds=0.0)
    first = store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    with pytest.raises(SweepLockedError, match="is held by another job"):
        store.acquire(SWEEP, ttl=60, renew=False, clock=clock)
    clock.now += 61
    second = store.acquire(SWEEP, ttl=60, say=lambda line: None, renew=False, clock=clock)
    assert second.record.generation == 2 and first.record.generation == 1


def test_an_unusable_location_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot take the lease of sweep nightly"):
        LeaseStore(str(blocker)).acquire(SWEEP, ttl=60, renew=False)
    with pytest.raises(OutputError, match="not a usable folder or URI"):
        LeaseStore("nosuchscheme://bucket/x")


def _race(store: LeaseStore, sweep: str, barrier: threading.Barrier, winners: list[SweepLease],
          refused: list[str]) -> None:
    barrier.wait()
    try:
        winners.append(store.acquire(sweep, ttl=60, say=lambda line: None, renew=False))
    except SweepLockedError as error:
        refused.append(str(error))


@pytest.mark.parametrize("object_store", [False, True], ids=["posix", "object-store"])
def test_threads_racing_for_a_lease_never_both_win(tmp_path: Path, object_store: bool) -> None:
    """On a local folder (exclusive create), and on pyarrow's in-memory store, which like an object store has no
    conditional put and makes a written object visible whole (the write-then-read-back path)."""
    rounds, racers = (40, 6) if not object_store else (10, 4)
    root = "mock:///bucket/checkpoints" if object_store else str(tmp_path)
    for round_number in range(rounds):
        store = LeaseStore(root, settle_seconds=0.05)
        assert store.exclusive is not object_store
        sweep = f"race-{round_number}"
        if round_number % 2:  # every other round races for an expired lease rather than a fresh one
            store.acquire(sweep, ttl=0.01, renew=False)
            time.sleep(0.02)
        barrier = threading.Barrier(racers)
        winners: list[SweepLease] = []
        refused: list[str] = []
        threads = [threading.Thread(target=_race, args=(store, sweep, barrier, winners, refused))
                   for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, (round_number, refused)
        assert len(refused) == racers - 1 and all("is held by another job" in line for line in refused)
        assert _current(store, sweep).token == winners[0].record.token


RACER = """
import sys, time
from pipelines.errors import SweepLockedError
from pipelines.lakehouse.lease import LeaseStore
root, sweep, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(start - time.time(), 0))
try:
    lease = LeaseStore(root).acquire(sweep, ttl=60, say=print, renew=False)
except SweepLockedError:
    print("refused", flush=True)
else:
    print("won", lease.record.token, flush=True)
sys.stdin.read()  # the winner lives on (a dead holder on this host would be taken over) until the test is done
"""


def test_processes_racing_for_one_lease_never_both_win(tmp_path: Path) -> None:
    """Real processes (the jobs are processes, on one host or several sharing the folder), started together."""
    racers, rounds = 4, 4
    sweeps = [f"race-{n}" for n in range(rounds)]
    start = time.time() + 3.0  # interpreter start-up, before they all race
    children = [(sweep, subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), sweep, repr(start + n * 0.3)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                for n, sweep in enumerate(sweeps) for _ in range(racers)]
    outputs: dict[str, list[str]] = {sweep: [] for sweep in sweeps}
    try:
        for sweep, child in children:
            assert child.stdout is not None
            outputs[sweep].append(child.stdout.readline().strip())
    finally:
        for _, child in children:
            child.communicate(timeout=60)
    assert all(child.returncode == 0 for _, child in children)
    store = LeaseStore(str(tmp_path))
    for sweep, lines in outputs.items():
        won = [line.split()[1] for line in lines if line.startswith("won")]
        assert len(won) == 1 and lines.count("refused") == racers - 1, (sweep, lines)
        assert _current(store, sweep).token == won[0]


HOLDER = """
import sys
from pipelines.lakehouse.lease import LeaseStore
LeaseStore(sys.argv[1]).acquire("killed", ttl=600)
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_holder_killed_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """A scheduler's retry after SIGKILL need not wait for the lease to expire: the holder's process is gone."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    store = LeaseStore(str(tmp_path))
    with pytest.raises(SweepLockedError, match=f"{socket.gethostname()}/{holder.pid} started "):
        store.acquire("killed", ttl=60, renew=False)  # alive: refused
    holder.kill()
    holder.communicate(timeout=30)
    said: list[str] = []
    lease = store.acquire("killed", ttl=60, say=said.append, renew=False)
    assert len(said) == 1 and said[0].startswith(f"lease: sweep killed: taking over from {socket.gethostname()}/"
                                                 f"{holder.pid} started ")
    assert said[0].endswith("(its process is gone)") and lease.record.generation == 2


def test_a_holder_on_another_host_is_not_judged_by_a_local_process_id(tmp_path: Path) -> None:
    store = LeaseStore(str(tmp_path))
    lease = store.acquire(SWEEP, ttl=60, renew=False)
    record = json.loads((tmp_path / SWEEP / "lease-00000001.json").read_text())
    record.update(host="another-host", pid=2**22 + 12345)  # no such process here
    (tmp_path / SWEEP / "lease-00000001.json").write_text(json.dumps(record))
    with pytest.raises(SweepLockedError, match="another-host/4206649 started"):
        store.acquire(SWEEP, ttl=60, renew=False)
    assert lease.record.generation == 1
