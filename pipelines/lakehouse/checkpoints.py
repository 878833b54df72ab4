"""Sweep checkpoints as files under a folder or URI, written atomically, read newest first.

A checkpoint is one ``.npz`` file (numpy arrays, no pickles) at
``<output.checkpoints>/<sweep id>/checkpoint-<sequence>.npz``. Files are written through
:mod:`pyarrow.fs`, so the location may be a local or shared path, ``file:``, ``s3://``, ``gs://``,
``hdfs://`` or ``abfs://`` (what any Spark executor could reach too), and writing needs no Spark: a driver
whose JVM is already gone (spark-submit stopped by a signal) still saves its work.

A file is written under a temporary name and renamed into place, so a reader never sees half a
checkpoint; a file that cannot be parsed anyway (a torn write on a store without atomic renames) is
skipped in favour of the previous one.
"""

from __future__ import annotations

import io
import re
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow.fs as pafs

from pipelines.errors import OutputError
from pipelines.faults import kill_point

Arrays = dict[str, npt.NDArray[np.generic]]
_NAME = re.compile(r"^checkpoint-(\d{8})\.npz$")


def encode_arrays(arrays: Arrays) -> bytes:
    """``.npz`` bytes of ``arrays`` (uncompressed: checkpoints are small and written often)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as ArrayLike values
    return buffer.getvalue()


def decode_arrays(payload: bytes) -> Arrays:
    """Inverse of :func:`encode_arrays`; raises ``ValueError`` (or ``OSError``) on a damaged payload."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint file: its sequence number and its arrays."""

    sequence: int
    path: str
    arrays: Arrays


class CheckpointStore:
    """The checkpoints of every sweep under one root (``output.checkpoints``)."""

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            self._fs, self._path = pafs.FileSystem.from_uri(root)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise OutputError(f"output.checkpoints {root}: not a usable folder or URI ({error})") from None

    def _folder(self, sweep_id: str) -> str:
        return f"{self._path.rstrip('/')}/{sweep_id}"

    def sequences(self, sweep_id: str) -> list[tuple[int, str]]:
        """``(sequence, path)`` of the sweep's checkpoint files, newest first."""
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._folder(sweep_id), allow_not_found=True))
        except OSError as error:
            raise OutputError(f"output.checkpoints {self.root}: cannot list checkpoints ({error})") from None
        found = []
        for info in infos:
            match = _NAME.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                found.append((int(match.group(1)), info.path))
        return sorted(found, reverse=True)

    def write(self, sweep_id: str, arrays: Arrays) -> StoredCheckpoint:
        """Write a new checkpoint (sequence = newest + 1) atomically; return it.

        Raises
        ------
        OutputError
            The location cannot be written.
        """
        existing = self.sequences(sweep_id)
        sequence = existing[0][0] + 1 if existing else 1
        folder = self._folder(sweep_id)
        target = f"{folder}/checkpoint-{sequence:08d}.npz"
        scratch = f"{folder}/.checkpoint-{sequence:08d}-{uuid.uuid4().hex}.tmp"
        try:
            self._fs.create_dir(folder, recursive=True)
            with self._fs.open_output_stream(scratch) as stream:
                stream.write(encode_arrays(arrays))
            kill_point("checkpoint")
            self._fs.move(scratch, target)
        except OSError as error:
            raise OutputError(f"output.checkpoints {self.root}: cannot write {target} ({error})") from None
        return StoredCheckpoint(sequence, target, arrays)

    def check_writable(self, sweep_id: str) -> None:
        """Write and delete a small file in the sweep's folder: a sweep learns that its checkpoints cannot be
        written before it trains, not after.

        Raises
        ------
        OutputError
            The location cannot be written (or the probe cannot be removed).
        """
        folder = self._folder(sweep_id)
        probe = f"{folder}/.write-probe-{uuid.uuid4().hex}"
        try:
            self._fs.create_dir(folder, recursive=True)
            with self._fs.open_output_stream(probe) as stream:
                stream.write(b"lrsweep write probe\n")
            self._fs.delete_file(probe)
        except OSError as error:
            raise OutputError(f"output.checkpoints {self.root}: cannot write in {folder} ({error}); point "
                              "output.checkpoints at a folder or URI this job can write") from None

    def latest(self, sweep_id: str) -> Iterator[StoredCheckpoint | str]:
        """The sweep's checkpoints newest first; a file that cannot be read yields its path instead."""
        for sequence, path in self.sequences(sweep_id):
            try:
                with self._fs.open_input_stream(path) as stream:
                    payload = stream.read()
                yield StoredCheckpoint(sequence, path, decode_arrays(payload))
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
                yield path

    def prune(self, sweep_id: str, keep: int = 1) -> int:
        """Delete all but the ``keep`` newest checkpoints of a sweep; return how many were deleted."""
        deleted = 0
        for _, path in self.sequences(sweep_id)[keep:]:
            try:
                self._fs.delete_file(path)
                deleted += 1
            except OSError:
                pass  # best effort: an old checkpoint left behind costs only space
        return deleted
