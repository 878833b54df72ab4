"""Names as Spark SQL takes them: column and table identifiers quoted once, here, and table names checked.

A column may be named with dots, spaces, unicode or backticks (``monthly.charges``, ``plan type``, ``we`ird``).
Spark parses a bare name given to ``F.col`` or to a string-taking DataFrame method: ``a.b`` is field ``b`` of
struct ``a``. Every user-named column therefore reaches Spark through :func:`column` (a backquoted name, its
backticks doubled), and every name put into SQL text through :func:`quote_identifier`.

A catalog table name is one to three dot-separated parts, each plain (letters, digits, ``_``) or backquoted;
anything else (``x; DROP TABLE y``) is refused when the configuration is loaded (:func:`table_name_parts`).
A path may hold any character: it is passed to ``DataFrameReader.load`` or quoted as ``delta.`<path>```.

This module imports nothing of lrsweep, so the configuration can use it before Spark starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

ArrowFunction = Callable[["Iterator[pa.RecordBatch]"], "Iterator[pa.RecordBatch]"]

_PLAIN_PART = re.compile(r"[A-Za-z0-9_]+")
_PART = re.compile(r"`(?:[^`]|``)+`|[A-Za-z0-9_]+")
MAX_NAME_PARTS = 3  # catalog.schema.table


def quote_identifier(name: str) -> str:
    """``name`` as one Spark SQL identifier: in backticks, its own backticks doubled (```we``ird```)."""
    return "`" + name.replace("`", "``") + "`"


def column(name: str) -> Column:
    """The top-level column called exactly ``name`` (never a struct field, whatever characters it holds)."""
    from pyspark.sql import functions as F

    return F.col(quote_identifier(name))


def map_in_arrow(dataframe: DataFrame, names: Sequence[str], function: ArrowFunction, schema: str) -> DataFrame:
    """``dataframe.select(names).mapInArrow(function, schema)`` for columns of any name.

    PySpark's ``mapInArrow`` looks each column up by a name it parses (``we`ird`` fails to parse), so the
    columns travel under positional names (:func:`positional_columns`) and ``function`` receives batches
    under their own names again (:func:`named_batches`).
    """
    return positional_columns(dataframe, names).mapInArrow(named_batches(function, names), schema)


def positional_name(index: int) -> str:
    """The name the ``index``-th column travels under into ``mapInArrow``."""
    return f"_{index}"


#: The struct :func:`positional_columns` builds its projection in (expanded at once; never in a result).
_POSITIONAL_STRUCT = "__lrsweep_positional"


def positional_columns(dataframe: DataFrame, names: Sequence[str]) -> DataFrame:
    """The columns ``names`` of ``dataframe`` renamed ``_0, _1, ...``.

    Rename before sorting, not after: a projection of thousands of aliases over a sort makes Spark's planner
    recurse once per column (``StackOverflowError`` at 2,000 columns) when it carries the order through them.

    The projection is written as SQL text, one struct of the renamed columns expanded at once (the optimizer
    folds it into a plain projection): built with DataFrame methods it cost three py4j round trips per column
    (the column, its alias, its place in the list), a few milliseconds each on a busy driver.
    """
    if not names:
        return dataframe.select()
    fields = ", ".join(f"{quote_identifier(name)} AS {positional_name(index)}" for index, name in enumerate(names))
    return dataframe.selectExpr(f"struct({fields}) AS {_POSITIONAL_STRUCT}").select(f"{_POSITIONAL_STRUCT}.*")


def xxhash64_of(seed: int, names: Sequence[str]) -> Column:
    """``xxhash64(seed, <names>...)`` over the top-level columns ``names``, as SQL text: one py4j round trip, not
    two per column. The seed is an INT literal when it fits 32 bits (a BIGINT otherwise), as ``F.lit`` makes it,
    so the hash is ``F.xxhash64(F.lit(seed), *columns)``'s, bit for bit."""
    from pyspark.sql import functions as F

    return F.expr(f"xxhash64({', '.join([str(int(seed)), *map(quote_identifier, names)])})")


def named_batches(function: ArrowFunction, names: Sequence[str]) -> ArrowFunction:
    """``function`` over batches of :func:`positional_columns`, given them under their own ``names``."""
    own = list(names)

    def renamed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        return function(pa.RecordBatch.from_arrays(batch.columns, names=own) for batch in batches)

    return renamed


def table_name_parts(name: str) -> list[str] | None:
    """The parts of a catalog table name (backquoted parts unquoted), or None when ``name`` is not one.

    >>> table_name_parts("sales.`churn features`")
    ['sales', 'churn features']
    >>> table_name_parts("x; DROP TABLE y") is None
    True
    """
    parts: list[str] = []
    position = 0
    while True:
        match = _PART.match(name, position)
        if match is None:
            return None
        text = match.group(0)
        parts.append(text if _PLAIN_PART.fullmatch(text) else text[1:-1].replace("``", "`"))
        position = match.end()
        if position == len(name):
            return parts if len(parts) <= MAX_NAME_PARTS else None
        if name[position] != ".":
            return None
        position += 1


def quote_table_name(name: str) -> str:
    """A valid catalog table name with every part quoted (``sales.churn`` -> ```sales`.`churn```).

    Raises :class:`ValueError` for a name that :func:`table_name_parts` refuses (the configuration refuses it
    first; this guards names that come from elsewhere).
    """
    parts = table_name_parts(name)
    if parts is None:
        raise ValueError(f"{name!r} is not a table name")
    return ".".join(quote_identifier(part) for part in parts)
