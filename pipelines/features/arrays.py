"""Arrow arrays to and from numpy without pandas, for the code that runs in Spark's Python workers.

pyarrow imports pandas, when it is installed, the first time ``pyarrow.array`` is called (it asks whether the
values are a pandas object) and the first time ``Array.to_numpy`` is (its conversion is pandas' own); that is
about 0.4 s and 300 modules in a new worker that needs none of it (PySpark's Arrow tasks do not import pandas
themselves). A primitive Arrow array is a data buffer numpy can view directly: :func:`numpy_of` casts (Arrow's
own casts), fills the nulls and views the buffer; :func:`arrow_of` builds an array from buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc


def numpy_of(values: pa.Array | pa.ChunkedArray, dtype: npt.DTypeLike, fill: float | int | None = None
             ) -> npt.NDArray[Any]:
    """``values`` (numbers, booleans, or anything Arrow casts to ``dtype``) as a numpy array of ``dtype``,
    shape ``(len(values),)``, read-only.

    Nulls become ``fill``: NaN by default for a float ``dtype``; another ``dtype`` with nulls and no ``fill``
    raises :class:`ValueError`.
    """
    target = np.dtype(dtype)
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if target == np.bool_:  # Arrow packs booleans in bits: one byte each, then viewed as bool
        return numpy_of(values, np.uint8, None if fill is None else int(fill)).view(np.bool_)
    arrow_type = pa.from_numpy_dtype(target)
    if values.type != arrow_type:
        values = pc.cast(values, arrow_type)
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=target)
    validity, data = values.buffers()[:2]
    array = np.frombuffer(data, dtype=target, count=n, offset=values.offset * target.itemsize)
    if values.null_count:  # (pc.fill_null would build an Arrow scalar, which imports pandas)
        if fill is None:
            if target.kind != "f":
                raise ValueError(f"{values.null_count} nulls among values that must be {target}")
            fill = float("nan")
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        array = np.where(bits[values.offset:values.offset + n].astype(np.bool_), array, fill).astype(target)
    return array


def arrow_of(values: npt.NDArray[np.generic] | Sequence[bool | int | float | bytes | str],
             type: pa.DataType | None = None) -> pa.Array:
    """``pa.array(values, type)`` without nulls, built from buffers: a numpy array of numbers or booleans, or a
    list of booleans, numbers (``type`` given), bytes (``binary``) or strings (``string``)."""
    if type is None:
        if isinstance(values, np.ndarray):
            type = pa.from_numpy_dtype(values.dtype)
        elif values and all(isinstance(v, bool) for v in values):
            type = pa.bool_()
        elif values and all(isinstance(v, bytes) for v in values):
            type = pa.binary()
        elif values and all(isinstance(v, str) for v in values):
            type = pa.string()
        else:
            raise TypeError("arrow_of: give the type of these values")
    n = len(values)
    if pa.types.is_binary(type) or pa.types.is_string(type):
        encoded = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum([len(v) for v in encoded], out=offsets[1:])
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
    if pa.types.is_boolean(type):
        bits = np.packbits(np.asarray(values, dtype=np.bool_), bitorder="little")
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(bits)])
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type])  # (to_pandas_dtype would import pandas)
    return pa.Array.from_buffers(type, n, [None, pa.py_buffer(data)])


_NUMPY_TYPES = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
                pa.uint8(): np.uint8, pa.float32(): np.float32, pa.float64(): np.float64}
