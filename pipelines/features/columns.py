"""Which columns of a table can be features, and as what: a Spark type -> an encoding family, or a reason.

Families: ``number`` (integers, floats, decimals), ``boolean``, ``date``, ``timestamp``, ``string`` (one-hot or
hashed, decided from the training split's cardinality), ``array`` (``array<numeric>`` of a fixed length) and
``vector`` (Spark ML ``VectorUDT``, dense or sparse). Anything else (maps, structs, binary, arrays of
non-numbers, intervals) is left out with its reason when features are chosen automatically, and refused
when listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.identifiers import column, quote_identifier

FAMILIES = ("number", "boolean", "date", "timestamp", "string", "array", "vector")


def column_family(dtype: T.DataType) -> tuple[str | None, str]:
    """``(family, "")`` for a usable type, ``(None, reason)`` otherwise."""
    if isinstance(dtype, T.BooleanType):
        return "boolean", ""
    if isinstance(dtype, T.NumericType):
        return "number", ""
    if isinstance(dtype, T.DateType):
        return "date", ""
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return "timestamp", ""
    if isinstance(dtype, T.StringType | T.VarcharType | T.CharType):
        return "string", ""
    if isinstance(dtype, T.ArrayType):
        if isinstance(dtype.elementType, T.NumericType):
            return "array", ""
        return None, f"an array of {dtype.elementType.simpleString()} (only arrays of numbers are features)"
    if isinstance(dtype, T.UserDefinedType):
        if dtype.typeName() == "vector" or type(dtype).__name__ == "VectorUDT":
            return "vector", ""
        return None, f"user-defined type {dtype.simpleString()} is not supported"
    kind = dtype.simpleString()
    return None, f"type {kind} is not supported (a {kind.split('<')[0]} column cannot be a feature)"


@dataclass(frozen=True)
class ColumnChoice:
    """The feature columns with their family, and the columns left out with the reason."""

    used: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)

    def describe_left_out(self) -> list[str]:
        return [f"{name}: {reason}" for name, reason in self.left_out.items()]


def choose_columns(types: dict[str, T.DataType], label: str, listed: list[str] | None,
                   not_features: dict[str, str]) -> tuple[ColumnChoice, list[tuple[str, str]]]:
    """Feature columns of a table with ``types`` (in table order).

    ``listed``: ``data.features`` (None: every usable column). ``not_features``: columns that are never
    features, with the reason (the exclusions, the weight, split and time columns). Returns the choice and,
    for listed columns that cannot be used, ``(column, reason)`` pairs (the caller fails naming them).
    """
    used: dict[str, str] = {}
    left_out: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    names = listed if listed is not None else [name for name in types if name != label]
    for name in names:
        if listed is None and name in not_features:
            left_out[name] = not_features[name]
            continue
        family, reason = column_family(types[name])
        if family is not None:
            used[name] = family
        elif listed is not None:
            refused.append((name, reason))
        else:
            left_out[name] = reason
    return ColumnChoice(used, left_out), refused


def model_input(name: str, family: str) -> Column:
    """A column as the logged model takes it: numbers and booleans as double, arrays as array<double>,
    vectors as dense array<double> (what a Spark UDF and an MLflow signature accept), the rest as read."""
    if family in ("number", "boolean", "array"):  # SQL text: one py4j round trip, not three
        quoted = quote_identifier(name)
        return F.expr(f"CAST({quoted} AS {'ARRAY<DOUBLE>' if family == 'array' else 'DOUBLE'}) AS {quoted}")
    if family == "vector":
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(column(name)).alias(name)
    return column(name)


def any_of(conditions: Sequence[Column]) -> Column:
    """Whether any of ``conditions`` holds, as one flat expression (``greatest`` of the booleans; False when
    empty, nulls ignored).

    Never a chain ``c1 | c2 | ... | cn``: Spark analyses expressions recursively, and a chain as deep as a
    2,000-column table overflows the JVM's stack (``StackOverflowError``). A balanced tree is not enough either:
    the optimizer splits a filter's conjunctions and disjunctions and joins them back as a chain.
    """
    return _flat(list(conditions), F.greatest, False)


def all_of(conditions: Sequence[Column]) -> Column:
    """Whether every one of ``conditions`` holds, as one flat expression (``least``; True when empty, nulls
    ignored); see :func:`any_of`."""
    return _flat(list(conditions), F.least, True)


def _flat(conditions: list[Column], combine: Callable[..., Column], empty: bool) -> Column:
    if not conditions:
        return F.lit(empty)
    joined = conditions[0] if len(conditions) == 1 else combine(*conditions)  # greatest/least take 2 or more
    return F.coalesce(joined, F.lit(empty))
