"""Query predicates written as the partial indexes' own WHERE terms, so that they are used.

SQLite uses a partial index only where the query's WHERE holds a term that is, as written,
the index's own (`NOT fanned_out`, `status = 'pending'`). A bound parameter (`status = ?`)
does not match, nor does the form SQLAlchemy gives a boolean test on SQLite (`fanned_out IS 0`,
`split = 0`): the query then reads the whole table, however few rows the index holds.
PostgreSQL's generic plans (asyncpg's prepared statements, once reused) cannot use a partial
index against a parameter either. The scale review (docs/testing.md, 2026-12-07) found the
dispatcher's idle poll, `GET /metrics` and `cdp serve`'s start reading whole tables this way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal


class _Not(ColumnElement[bool]):
    """`NOT <column>` on every dialect (SQLAlchemy writes `<column> = 0` on SQLite). Untyped:
    a Boolean-typed element would be compared to 1 again there."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects


@compiles(_Not)
def _render_not(element: _Not, compiler: Any, **kw: Any) -> str:
    return "NOT " + compiler.process(element.column, **kw)


def is_not(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """The boolean column is false, as an index's `WHERE NOT column`."""
    return _Not(column)


def equals(column: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    """`column = 'value'` with the value written into the statement, as in an index's WHERE.
    Only for the code's own constants (a status name), never for input."""
    return column == _literal(value)


def among(column: ColumnElement[Any], values: tuple[str, ...]) -> ColumnElement[bool]:
    """`column IN ('a', 'b')`, written out as in an index's WHERE (the code's constants only)."""
    return column.in_([_literal(v) for v in values])


def _literal(value: str) -> ColumnElement[Any]:
    if not value.replace("_", "").isalnum():
        raise ValueError("a partial index's constant is a plain word")
    return literal_column(f"'{value}'")
