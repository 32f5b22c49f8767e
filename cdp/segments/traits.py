"""Typed predicates over one key of the JSON `traits` column, on SQLite and PostgreSQL.

Traits hold strings, numbers, booleans or null. A comparison only matches a value of the type
it names: `eq "5"` does not match the number 5, `gt 3` never matches a string. PostgreSQL does
not promise the evaluation order of AND, so a numeric cast is guarded by CASE and never sees a
string. Every predicate is definite (never SQL NULL), so `not` is a plain complement.

Numbers compare by value, alike on both backends. SQLite compares a JSON integer (within 64
bits) with a rule's number exactly and reads any other JSON number as a double. A JSON integer
beyond 64 bits (a 20-digit card number) it also reads as a double, the nearest one: 2^64 - 1
was 2^64 there, below `2^64` as a rule's number on PostgreSQL and not on SQLite, so a customer
was in a segment on one database only (found by the differential test). On SQLite such an
integer is compared by its JSON text (`->`, SQLite 3.38 or later): its sign, then its number of
digits, then its digits, with the rule's number as the decimal it is written as (below). An
older SQLite has no `->`: there such an integer still compares as the nearest double.
PostgreSQL reads the trait as `numeric`, not as a double, where 2^53 + 1 equals 2^53 (card and order
numbers have 16 digits) and a trait of 10^400 overflowed, a 500 for the whole segment; a
rule's fraction is bound as the decimal it is written as (`repr`, as JSON writes a trait's
float), so a fraction equals a trait fraction exactly when they are the same double. Each
number of a rule is bound with its own type: one `in` list bound as the type of its first
value read 7.5 as 7 on PostgreSQL (and 1e300 failed).

The trait's name reaches the database as a bound parameter, never as SQL text: PostgreSQL's
`->`/`->>` take it as a key as it is, SQLite's json_extract as a quoted JSON path label, in
which '.', ' ' and '[' are plain characters (`$."loyalty tier"`). See sqlite_json_path for
names beyond ASCII.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Float, Numeric, String, case, false, func, literal, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from cdp.db.tables import profiles

INT64 = 2**63  # a JSON integer SQLite reads as an integer lies within ±INT64
# whether this SQLite reads a JSON value as written (`->`, 3.38): compares beyond 64 bits exactly
SQLITE_JSON_TEXT = sqlite3.sqlite_version_info >= (3, 38, 0)


def sqlite_json_path(name: str) -> str:
    """`$."name"`, with the name spelled as the traits column stores its keys: SQLAlchemy's JSON
    type writes them with json.dumps, which escapes every character beyond ASCII (`уровень` is
    `\\u0443\\u0440...`), and SQLite before 3.45 matches a label only byte for byte (later
    versions decode escapes on both sides, so this spelling matches there too). A name with a
    quote or a backslash could not be spelled; cdp.labels.trait_name admits none."""
    if '"' in name or "\\" in name:
        raise ValueError("a trait name with a quote or backslash has no SQLite JSON path")
    return '$."' + json.dumps(name)[1:-1] + '"'


def definite(pred: ColumnElement[bool]) -> ColumnElement[bool]:
    return func.coalesce(pred, false())


class TraitSQL:
    def __init__(self, dialect: str, name: str) -> None:
        col = profiles.c.traits
        self.postgres = dialect == "postgresql"
        if self.postgres:
            key = literal(name, String())
            self._type = func.json_typeof(col.op("->")(key))
            self._text = col.op("->>", return_type=String())(key)
        else:
            path = literal(sqlite_json_path(name), String())
            self._type = func.json_type(col, path)
            self._text = func.json_extract(col, path)
            self._json = col.op("->", return_type=String())(path)  # as written (SQLITE_JSON_TEXT)

    def is_string(self) -> ColumnElement[bool]:
        return self._type == ("string" if self.postgres else "text")

    def is_number(self) -> ColumnElement[bool]:
        if self.postgres:
            return self._type == "number"
        return self._type.in_(("integer", "real"))

    def number(self) -> ColumnElement[float]:
        if self.postgres:  # never cast a string
            return case((self.is_number(), self._text.cast(Numeric())), else_=None)
        return self._text

    def bound(self, value: float) -> ColumnElement[Any]:
        """A rule's number as a parameter of its own type (bool is no number here)."""
        if not isinstance(value, float):
            return literal(value, BigInteger())
        if self.postgres:  # numeric with numeric: never a double that overflows
            return literal(Decimal(repr(value)), Numeric())
        return literal(value, Float())

    def _beyond_64_bits(self) -> ColumnElement[bool]:
        """SQLite: an integer trait that json_extract reads as a double."""
        return (self._type == "integer") & (func.typeof(self._text) == "real")

    def _versus(self, value: float) -> ColumnElement[int]:
        """SQLite, for a trait beyond 64 bits: -1, 0 or 1 as it is below, equal to or above
        the rule's number, exactly."""
        text = self._json
        negative = func.substr(text, 1, 1) == "-"
        if abs(value) < INT64:  # every trait beyond 64 bits is further from zero
            return case((negative, -1), else_=1)
        rule = int(Decimal(repr(value)))  # as PostgreSQL binds it (`bound`): whole, this large
        digits = case((negative, func.substr(text, 2)), else_=text)
        wanted = str(abs(rule))
        size = func.length(digits)
        magnitude = case(
            (size > len(wanted), 1),
            (size < len(wanted), -1),
            (digits > wanted, 1),  # as many digits: compared as text, byte by byte
            (digits < wanted, -1),
            else_=0,
        )
        if rule < 0:
            return case((negative, -magnitude), else_=1)
        return case((negative, -1), else_=magnitude)

    def _exact(self, op: str, value: float) -> ColumnElement[bool]:
        """The number trait `op` the rule's number, by value (op: eq, gt, gte, lt, lte)."""
        n, v = self.number(), self.bound(value)
        plain = {"eq": n == v, "gt": n > v, "gte": n >= v, "lt": n < v, "lte": n <= v}[op]
        if self.postgres or not SQLITE_JSON_TEXT:
            return plain
        if op == "eq":
            beyond = self._written_as([value])
        else:
            c = self._versus(value)
            beyond = {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
        return case((self._beyond_64_bits(), beyond), else_=plain)

    def _written_as(self, values: list[float]) -> ColumnElement[bool]:
        """SQLite, for a trait beyond 64 bits: it equals one of the rule's numbers. A JSON
        integer is written in one way only (a sign, then digits without leading zeros), so it
        is equal exactly when its text is the number's: one IN list. (An OR of `_versus` per
        value nested an expression a level per value, and SQLite refuses one deeper than 1,000:
        a rule with an `in` list of 1,000 such numbers answered every read with an error.)"""
        texts = [str(int(Decimal(repr(v)))) for v in values if abs(v) >= INT64]
        return self._json.in_(texts) if texts else false()

    def is_bool(self, value: bool) -> ColumnElement[bool]:
        if self.postgres:
            return (self._type == "boolean") & (self._text == ("true" if value else "false"))
        return self._type == ("true" if value else "false")

    def exists(self) -> ColumnElement[bool]:
        return definite(self._type.is_not(None) & (self._type != "null"))

    def equals(self, value: Any) -> ColumnElement[bool]:
        if isinstance(value, bool):
            return definite(self.is_bool(value))
        if isinstance(value, str):
            return definite(self.is_string() & (self._text == value))
        return definite(self.is_number() & self._exact("eq", value))

    def one_of(self, values: tuple[Any, ...]) -> ColumnElement[bool]:
        strings = [v for v in values if isinstance(v, str)]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        preds = [self.is_bool(v) for v in dict.fromkeys(v for v in values if isinstance(v, bool))]
        if strings:
            preds.append(self.is_string() & self._text.in_(strings))
        wholes = [v for v in numbers if isinstance(v, int)]
        fractions = [v for v in numbers if isinstance(v, float)]
        for group in (wholes, fractions):  # one type per list: PostgreSQL unifies a list's types
            if group:
                inside = self.number().in_([self.bound(v) for v in group])
                if not self.postgres and SQLITE_JSON_TEXT:  # beyond 64 bits: exactly
                    beyond = self._written_as(group)
                    inside = case((self._beyond_64_bits(), beyond), else_=inside)
                preds.append(self.is_number() & inside)
        return definite(or_(*preds))

    def compare(self, op: str, value: float) -> ColumnElement[bool]:
        return definite(self.is_number() & self._exact(op, value))

    def contains(self, text: str) -> ColumnElement[bool]:
        where = func.strpos(self._text, text) if self.postgres else func.instr(self._text, text)
        return definite(self.is_string() & (where > 0))

    def differs(self, value: Any) -> ColumnElement[bool]:
        return not_(self.equals(value))
