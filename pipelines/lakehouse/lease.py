"""One live job per sweep id: a lease in the storage every job of the sweep shares (``output.checkpoints``).

A job takes the lease on its sweep id before it creates any MLflow run or trains, renews it from a daemon thread
every ``ttl / 3`` seconds, and releases it when it ends (normally, on an error or on a signal). A second job of
the same id finds the lease live and is refused (:class:`~pipelines.errors.SweepLockedError`, exit 2) with the
holder named; a lease whose holder stopped renewing (killed, its machine gone) is taken over once it expired
(``renewed + ttl``), with a line saying so; on the holder's own host a holder whose process is gone (killed
with SIGKILL, so that a scheduler's retry need not wait) is taken over at once. Hosts are told apart by their
name: two containers sharing a hostname and a checkpoint folder but not a process namespace would take each
other's lease; give them distinct hostnames. A holder whose lease was taken over (it was paused longer than the
ttl) learns it at its next renewal, or at its next check (each epoch boundary asks the store), and stops there
(:class:`~pipelines.errors.LeaseLostError`) without writing again, so two jobs never go on writing one sweep.

The lease is a sequence of generation files in the sweep's checkpoint folder::

    <output.checkpoints>/<sweep id>/lease-00000007.json   {"host", "pid", "started", "token", "renewed", ...}

Only the highest generation counts, and it is never deleted (a release rewrites it as released; a taker deletes
the ones below its own), so generation numbers only grow (a job that recreated a deleted lower one from a stale
listing finds the higher one right after and backs off). Taking the lease is creating the next generation's
file *exclusively*: of two jobs that read the same expired (or released) generation ``n``, exactly one creates
``n + 1``; the other fails, reads the winner's live lease and is refused. That exclusive create is the one step
that needs the store's help:

* On a local or mounted POSIX filesystem (``pyarrow.fs.LocalFileSystem``) the file is written under a temporary
  name and hard-linked to its name (``link`` fails when the target exists; a reader never sees half a lease).
  Where hard links are not supported it falls back to ``O_CREAT | O_EXCL``. Both are atomic.
* Object stores (``s3://``, ``gs://``, ``abfs://``) and ``hdfs://`` through pyarrow have no conditional put.
  The file is written only if it does not exist yet, then, after :data:`OBJECT_STORE_SETTLE_SECONDS`, read back:
  the job holds the lease only if its own random token is there (the stores are read-after-write consistent, and
  the last writer wins). The residual race: two jobs whose existence check and write are more than the settle
  time apart, and whose writes interleave, can both read back their own token. Renewals and epoch-boundary
  checks read the token back too, so the overwritten one learns within ``ttl / 3`` (or at its next boundary)
  that it lost, and stops; in the worst case both train for that long. Start jobs of one sweep id from one
  scheduler if that matters.

Times are wall-clock seconds since the epoch: jobs on different machines compare them, so their clocks must
agree to well within the ttl (NTP does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from types import TracebackType

import pyarrow.fs as pafs

from pipelines.errors import LeaseLostError, OutputError, SweepLockedError

#: How long a lease lives without renewal (``output.lease_seconds``'s default).
DEFAULT_TTL_SECONDS = 60.0
#: Object stores: the wait between writing a new generation and reading it back (see the module docstring).
OBJECT_STORE_SETTLE_SECONDS = 1.0
#: At most this long a release waits for a renewal in flight.
RELEASE_WAIT_SECONDS = 5.0
#: Tries at taking the lease when other jobs keep winning the race for the next generation.
ACQUIRE_ATTEMPTS = 5

_NAME = re.compile(r"^lease-(\d{8})\.json$")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LeaseRecord:
    """One generation's file: who holds (or held) the lease, and until when.

    ``started`` and ``renewed`` are wall-clock seconds since the epoch; the lease expires at
    ``renewed + ttl`` unless ``released`` says its holder gave it up.
    """

    generation: int
    host: str
    pid: int
    started: float
    token: str
    renewed: float
    ttl: float
    released: bool = False

    @property
    def expires(self) -> float:
        return self.renewed + self.ttl

    def live(self, now: float) -> bool:
        return not self.released and now < self.expires

    def holder(self) -> str:
        """``host/pid started <UTC time>``."""
        return f"{self.host}/{self.pid} started {_iso(self.started)}"

    def payload(self) -> bytes:
        fields = asdict(self)
        del fields["generation"]  # the file's name says it
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def parse(cls, generation: int, payload: bytes) -> LeaseRecord:
        """The record in ``payload``; raises ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
        fields = json.loads(payload.decode())
        return cls(generation=generation, host=str(fields["host"]), pid=int(fields["pid"]),
                   started=float(fields["started"]), token=str(fields["token"]),
                   renewed=float(fields["renewed"]), ttl=float(fields["ttl"]),
                   released=bool(fields.get("released", False)))


class LeaseStore:
    """The leases of every sweep under one root (``output.checkpoints``); see the module docstring.

    Parameters
    ----------
    root
        A folder or URI (``file:``, ``s3://``, ``gs://``, ``hdfs://``, ``abfs://``).
    exclusive
        Whether the store can create a file only if it does not exist (default: a local filesystem can, object
        stores cannot and take the write-then-read-back path).
    settle_seconds
        The read-back wait of the non-exclusive path.
    """

    def __init__(self, root: str, exclusive: bool | None = None,
                 settle_seconds: float = OBJECT_STORE_SETTLE_SECONDS) -> None:
        self.root = root
        try:
            self._fs, self._path = pafs.FileSystem.from_uri(root)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise OutputError(f"output.checkpoints {root}: not a usable folder or URI ({error})") from None
        self.exclusive = isinstance(self._fs, pafs.LocalFileSystem) if exclusive is None else exclusive
        self.settle_seconds = settle_seconds

    def folder(self, sweep_id: str) -> str:
        return f"{self._path.rstrip('/')}/{sweep_id}"

    def path(self, sweep_id: str, generation: int) -> str:
        return f"{self.folder(sweep_id)}/lease-{generation:08d}.json"

    # ------------------------------------------------------------------------------------- reading

    def generations(self, sweep_id: str) -> list[int]:
        """The sweep's lease generations, highest first."""
        infos = self._fs.get_file_info(pafs.FileSelector(self.folder(sweep_id), allow_not_found=True))
        found = [int(m.group(1)) for info in infos if (m := _NAME.match(info.base_name))]
        return sorted(found, reverse=True)

    def read(self, sweep_id: str, generation: int, ttl: float) -> LeaseRecord | None:
        """Generation ``generation``'s record; None when the file is gone. A file that is not a record yet
        (an ``O_EXCL`` create not written yet, a torn write) counts as held by someone unknown since the file's
        time, for ``ttl`` seconds."""
        path = self.path(sweep_id, generation)
        try:
            with self._fs.open_input_stream(path) as stream:
                payload = stream.read()
        except FileNotFoundError:
            return None
        try:
            return LeaseRecord.parse(generation, payload)
        except (ValueError, KeyError, TypeError):
            info = self._fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                return None
            since = info.mtime.timestamp() if info.mtime is not None else time.time()
            return LeaseRecord(generation, "unknown host", 0, since, "", since, ttl)

    def current(self, sweep_id: str, ttl: float = DEFAULT_TTL_SECONDS) -> LeaseRecord | None:
        """The highest generation's record (None: the sweep never had a lease)."""
        for _ in range(ACQUIRE_ATTEMPTS):
            generations = self.generations(sweep_id)
            if not generations:
                return None
            record = self.read(sweep_id, generations[0], ttl)
            if record is not None:
                return record
            # gone since the listing: a taker deleted it after creating a higher one, which the next listing shows
        raise OSError(f"the lease files of {sweep_id} keep changing under {self.root}")

    # ------------------------------------------------------------------------------------- writing

    def create(self, sweep_id: str, record: LeaseRecord) -> bool:
        """Create ``record``'s generation file unless it exists; True when this call created it."""
        path, payload = self.path(sweep_id, record.generation), record.payload()
        if self.exclusive:
            return _create_exclusive(path, payload)
        if self._fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        with self._fs.open_output_stream(path) as stream:
            stream.write(payload)
        time.sleep(self.settle_seconds)
        with self._fs.open_input_stream(path) as stream:
            return bool(stream.read() == payload)

    def overwrite(self, sweep_id: str, record: LeaseRecord) -> None:
        """Replace ``record``'s generation file whole (a renewal, a release)."""
        path, payload = self.path(sweep_id, record.generation), record.payload()
        if self.exclusive:
            scratch = f"{path}.{secrets.token_hex(8)}.tmp"
            with open(scratch, "wb") as handle:
                handle.write(payload)
            os.replace(scratch, path)  # atomic: a reader sees the old record or the new one
        else:
            with self._fs.open_output_stream(path) as stream:  # one put: atomic on object stores
                stream.write(payload)

    def highest(self, sweep_id: str, record: LeaseRecord) -> bool:
        """Whether ``record``, just created, is the highest generation. A job that read the listing before a
        taker created generation ``n + 1`` and deleted ``n`` could create ``n`` anew; it finds ``n + 1`` here,
        lost the race, and removes its file."""
        if max(self.generations(sweep_id), default=0) <= record.generation:
            return True
        with contextlib.suppress(OSError):
            self._fs.delete_file(self.path(sweep_id, record.generation))
        return False

    def delete_below(self, sweep_id: str, generation: int) -> None:
        """Delete the generations below ``generation`` (best effort: a stale file costs only space)."""
        for older in self.generations(sweep_id):
            if older < generation:
                with contextlib.suppress(OSError):
                    self._fs.delete_file(self.path(sweep_id, older))

    # ------------------------------------------------------------------------------------- the lease

    def acquire(self, sweep_id: str, ttl: float = DEFAULT_TTL_SECONDS, say: Callable[[str], None] = print,
                renew: bool = True, clock: Callable[[], float] = time.time) -> SweepLease:
        """Take the lease on ``sweep_id`` for ``ttl`` seconds, renewed from a daemon thread (unless ``renew`` is
        False) every ``ttl / 3`` seconds until :meth:`SweepLease.release`.

        Raises
        ------
        SweepLockedError
            Another job holds a live lease on the sweep id (the message names it and when it expires).
        OutputError
            The location cannot be read or written.
        """
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, not {ttl}")
        token = secrets.token_hex(16)
        host, pid = socket.gethostname(), os.getpid()
        started = clock()
        try:
            self._fs.create_dir(self.folder(sweep_id), recursive=True)
            for _ in range(ACQUIRE_ATTEMPTS):
                previous = self.current(sweep_id, ttl)
                now = clock()
                gone = previous is not None and previous.host == host and not process_alive(previous.pid)
                if previous is not None and previous.live(now) and not gone:
                    raise SweepLockedError(refusal(sweep_id, previous, now, self.root))
                generation = 1 if previous is None else previous.generation + 1
                record = LeaseRecord(generation, host, pid, started, token, now, ttl)
                if self.create(sweep_id, record) and self.highest(sweep_id, record):
                    if previous is not None and not previous.released:
                        why = "its process is gone" if previous.live(now) else \
                            f"expired {now - previous.expires:.0f} s ago"
                        say(f"lease: sweep {sweep_id}: taking over from {previous.holder()}, last renewed "
                            f"{now - previous.renewed:.0f} s ago ({why})")
                    self.delete_below(sweep_id, generation)
                    lease = SweepLease(self, sweep_id, record, clock)
                    if renew:
                        lease.start_renewing()
                    return lease
                # another job created this generation first: read what it wrote and decide again
        except OSError as error:
            raise OutputError(f"output.checkpoints {self.root}: cannot take the lease of sweep {sweep_id} "
                              f"({error}); point output.checkpoints at a folder or URI this job can write") from None
        raise SweepLockedError(f"sweep.id {sweep_id!r}: other jobs took its lease first {ACQUIRE_ATTEMPTS} times "
                               f"in a row under {self.root}; is a scheduler starting it in a loop?")


def refusal(sweep_id: str, holder: LeaseRecord, now: float, root: str) -> str:
    """The one line a job refused by a live lease prints."""
    return (f"sweep.id {sweep_id!r} is held by another job: {holder.holder()}, lease renewed "
            f"{max(now - holder.renewed, 0):.0f} s ago, expires {_iso(holder.expires)} (in "
            f"{holder.expires - now:.0f} s) unless renewed ({root}); wait for that job, or stop it")


class SweepLease:
    """A lease this job holds: renew it, check it, release it (see :meth:`LeaseStore.acquire`).

    Use as a context manager: leaving the block releases the lease, whatever ended it.
    """

    def __init__(self, store: LeaseStore, sweep_id: str, record: LeaseRecord,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.sweep_id, self.record, self.clock = store, sweep_id, record, clock
        self.lost: str | None = None  # why this job no longer holds the lease
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> None:
        """Push the expiry to now + ttl; sets :attr:`lost` (and stops renewing) if another job took the lease.

        Raises ``OSError`` when the store cannot be reached; the lease then stays valid until it expires.
        """
        with self._lock:
            if self.lost is not None or self._stopped.is_set() or self._taken_over():
                return
            renewed = replace(self.record, renewed=self.clock())
            self.store.overwrite(self.sweep_id, renewed)
            self.record = renewed

    def _taken_over(self) -> bool:
        """Whether another job holds the lease now (a higher generation, or another token in this one's file);
        sets :attr:`lost` saying who. Reads only."""
        store, record = self.store, self.record
        successor = store.read(self.sweep_id, record.generation + 1, record.ttl)
        if successor is not None:
            self.lost = f"taken over by {successor.holder()}"
            return True
        mine = store.read(self.sweep_id, record.generation, record.ttl)
        if mine is None or mine.token != record.token:
            taker = store.current(self.sweep_id, record.ttl)
            self.lost = f"taken over by {taker.holder()}" if taker is not None else "its file was deleted"
            return True
        return False

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if this job no longer holds the lease; called at safe points (epoch
        boundaries, before MLflow is completed and the results are finalized), so it asks the store (two small
        reads) rather than wait for the renewer's next round. A lease past its expiry (the renewer could not
        reach the store, or the process was paused) is renewed first if no one took it; one that cannot be read
        is held until it expires."""
        try:
            with self._lock:
                if self.lost is None and not self._stopped.is_set():
                    self._taken_over()
            if self.lost is None and self.clock() >= self.record.expires:
                self.renew()
        except OSError as error:
            if self.clock() >= self.record.expires:
                self.lost = f"not renewed before it expired ({error})"
        if self.lost is not None:
            raise LeaseLostError(
                f"sweep.id {self.sweep_id!r}: this job ({self.record.holder()}) lost its lease ({self.lost}); "
                "it stops so that one job writes the sweep: rerun it once the other job ended")

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_every, name=f"lease-{self.sweep_id}", daemon=True)
        self._thread.start()

    def _renew_every(self) -> None:
        while not self._stopped.wait(self.record.ttl / 3):
            try:
                self.renew()
            except OSError as error:  # a store outage: keep trying until the lease expires, then it is lost
                if self.clock() >= self.record.expires:
                    self.lost = f"not renewed before it expired ({error})"
            if self.lost is not None:
                return

    def release(self) -> None:
        """Stop renewing and mark the lease released, unless another job holds it now (best effort: a lease
        that cannot be released, its renewal stuck on an unreachable store, say, expires)."""
        self._stopped.set()
        # a job stopped by a signal has seconds to exit: never wait long for a renewal stuck in the store
        if not self._lock.acquire(timeout=RELEASE_WAIT_SECONDS):
            return
        try:
            if self.lost is not None:
                return
            with contextlib.suppress(OSError):
                mine = self.store.read(self.sweep_id, self.record.generation, self.record.ttl)
                successor = self.store.read(self.sweep_id, self.record.generation + 1, self.record.ttl)
                if mine is not None and mine.token == self.record.token and successor is None:
                    self.store.overwrite(self.sweep_id, replace(self.record, renewed=self.clock(), released=True))
        finally:
            self._lock.release()

    def __enter__(self) -> SweepLease:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()


def _create_exclusive(path: str, payload: bytes) -> bool:
    """Create ``path`` holding ``payload`` unless it exists, atomically (POSIX); True when this call created it."""
    scratch = f"{path}.{secrets.token_hex(8)}.tmp"
    with open(scratch, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(scratch, path)  # fails if path exists; path appears with its whole content
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network and FUSE filesystems): an exclusive create instead
        return _create_excl(path, payload)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)


def _create_excl(path: str, payload: bytes) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as handle:  # a reader meanwhile sees an empty file: held, by someone unknown
        handle.write(payload)
    return True


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed and not yet reaped, does not); True when it
    cannot be told (another user's process)."""
    if os.name != "posix":
        return True  # signal 0 would end the process on Windows; wait for the expiry there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True
