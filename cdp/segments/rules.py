"""The segment rule language: a JSON condition parsed into a small typed tree (pure Python).

    {"all": [...]}   every condition holds (an empty list: everyone)
    {"any": [...]}   at least one holds
    {"not": {...}}   the condition does not hold
    {"field": "...", "op": "eq|ne|in|gt|gte|lt|lte|contains|exists", "value": ...}

Every condition is two-valued: a customer without the value (no city, no such trait, no order
yet) simply does not satisfy `eq`, `gt`, `contains`..., and does satisfy `ne` and `not`.
Errors name the bad part by its path (`rules.all[1].op`) and never echo the value.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cdp.errors import FieldError, InvalidInput, repeatable
from cdp.labels import (
    CATEGORY_MAX,
    TRAIT_NAME_RULE,
    normalise_category,
    trait_name,
    trait_value,
)
from cdp.normalize import clean_text, normalise_country
from cdp.profiles.schemas import TRAIT_TEXT_MAX

MAX_DEPTH = 16
MAX_NODES = 500
# conditions that each look rows up per customer (the addresses' consent, the sources, the
# categories): 499 `consent_days` conditions took 179 s a members page at 4,000 customers on
# SQLite, 4.3 s on PostgreSQL; an `in` list says the same of many sources or categories
LOOKUP_FIELDS = frozenset({"consent_days", "source", "categories"})
MAX_LOOKUPS = 16
MAX_LIST = 1000
# The values of all `in` lists together: each is a parameter of the one SQL query, and
# PostgreSQL takes at most 32,767. A part adds at most 8 parameters of its own (a trait's `in`
# of every kind of value), so 500 parts and 20,000 values stay below ~24,500.
MAX_VALUES = 20_000
MAX_DAYS = 100_000
TRAIT_PREFIX = "traits."  # and a name by cdp.labels.trait_name, the rule ingest applies

COMPARE = frozenset({"eq", "ne", "gt", "gte", "lt", "lte"})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    kind: str  # text | count | money | days | source | categories | trait
    ops: frozenset[str]


_TEXT = FieldSpec("text", frozenset({"eq", "ne", "in", "exists"}))
_DAYS = FieldSpec("days", COMPARE | {"exists"})
FIELDS: dict[str, FieldSpec] = {
    "country": _TEXT,
    "city": _TEXT,
    "jurisdiction": _TEXT,
    "source": FieldSpec("source", frozenset({"eq", "ne", "in"})),
    "orders_count": FieldSpec("count", COMPARE | {"in"}),
    "total_spent": FieldSpec("money", COMPARE),
    "last_order_days": _DAYS,
    "first_order_days": _DAYS,
    "created_days": FieldSpec("days", COMPARE),
    # days since the customer's newest grant for the segment's purpose on its channel (on any
    # of their addresses of the channel's kind): a welcome series (lte 7), a re-permission
    # campaign (gte 730); `exists` false: no grant in force
    "consent_days": _DAYS,
    "categories": FieldSpec("categories", frozenset({"contains", "in", "exists"})),
}
TRAIT = FieldSpec("trait", COMPARE | {"in", "contains", "exists"})
OPS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists")


@dataclass(frozen=True, slots=True)
class Leaf:
    field: str  # a key of FIELDS, or "traits.<name>"
    op: str
    value: Any  # normalised; a tuple for `in`; a bool for `exists`

    @property
    def spec(self) -> FieldSpec:
        return TRAIT if self.field.startswith(TRAIT_PREFIX) else FIELDS[self.field]

    @property
    def trait(self) -> str:
        return self.field.removeprefix(TRAIT_PREFIX)


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class NotOf:
    item: Condition


Condition = Leaf | AllOf | AnyOf | NotOf


class _Bad(Exception):
    """A bad part of a condition (path, message), or every bad part of it (`errors`)."""

    def __init__(
        self, path: str = "", message: str = "", *, errors: list[FieldError] | None = None
    ):
        self.errors = [FieldError(path, message)] if errors is None else errors


def parse_rules(raw: Any, *, jurisdictions: Collection[str], path: str = "rules") -> Condition:
    """Validate `raw`; raise InvalidInput listing every bad part by its path."""
    parser = _Parser(frozenset(jurisdictions))
    cond = parser.node(raw, path, 1)
    if parser.errors:
        raise InvalidInput("the segment rules are not valid", parser.errors)
    assert cond is not None
    return cond


class _Parser:
    def __init__(self, jurisdictions: frozenset[str]) -> None:
        self.jurisdictions = jurisdictions
        self.errors: list[FieldError] = []
        self.nodes = 0
        self.values = 0
        self.lookups = 0

    def node(self, raw: Any, path: str, depth: int) -> Condition | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.nodes == MAX_NODES + 1:
                self.errors.append(FieldError(path, f"rules have more than {MAX_NODES} parts"))
            return None
        if depth > MAX_DEPTH:
            self.errors.append(FieldError(path, f"rules nest deeper than {MAX_DEPTH} levels"))
            return None
        if not isinstance(raw, dict):
            self.errors.append(FieldError(path, "must be an object (a condition)"))
            return None
        groups = [k for k in ("all", "any", "not") if k in raw]
        if groups:
            kind = groups[0]
            # each stray key named, and the group judged all the same: every bad part at once
            strays = dict.fromkeys(_key_path(path, k) for k in sorted(set(raw) - {kind}))
            self.errors += [FieldError(k, f"not allowed next to '{kind}'") for k in strays]
            group = self._group(kind, raw[kind], f"{path}.{kind}", depth)
            return None if strays else group
        if "field" in raw or "op" in raw:
            try:
                leaf = _leaf(raw, path, self.jurisdictions)
            except _Bad as bad:
                self.errors += bad.errors
                return None
            if leaf.field in LOOKUP_FIELDS:
                self.lookups += 1
                if self.lookups > MAX_LOOKUPS:
                    if self.lookups == MAX_LOOKUPS + 1:  # said once, at the part that crosses
                        message = (
                            f"rules have more than {MAX_LOOKUPS} conditions on consent_days, "
                            "source or categories (each is a look-up per customer; 'in' takes "
                            "a list)"
                        )
                        self.errors.append(FieldError(path, message))
                    return None
            if leaf.op == "in":
                before, self.values = self.values, self.values + len(leaf.value)
                if self.values > MAX_VALUES >= before:  # said once, at the part that crosses
                    message = f"the rules' 'in' lists hold more than {MAX_VALUES} values in all"
                    self.errors.append(FieldError(f"{path}.value", message))
                if self.values > MAX_VALUES:
                    return None
            return leaf
        self.errors.append(
            FieldError(path, "a condition has 'all', 'any', 'not', or 'field' and 'op'")
        )
        return None

    def _group(self, kind: str, raw: Any, path: str, depth: int) -> Condition | None:
        if kind == "not":
            item = self.node(raw, path, depth + 1)
            return None if item is None else NotOf(item)
        if not isinstance(raw, list):
            self.errors.append(FieldError(path, "must be a list of conditions"))
            return None
        items = [self.node(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(raw)]
        if any(x is None for x in items):
            return None
        good = tuple(x for x in items if x is not None)
        return AllOf(good) if kind == "all" else AnyOf(good)


def _key_path(path: str, key: str) -> str:
    """Where an unexpected key is: named, unless it could be personal data (a key that is an
    email address or a phone number); then the condition holding it."""
    return f"{path}.{key}" if repeatable(key) else path


def _leaf(raw: dict[str, Any], path: str, jurisdictions: frozenset[str]) -> Leaf:
    """The leaf, or _Bad naming every bad part of it: each unknown key, the field, the op, and
    each bad value of an `in` list (a value is judged only once field and op are good)."""
    errors = [
        FieldError(where, "unknown key")
        for where in dict.fromkeys(
            _key_path(path, k) for k in sorted(set(raw) - {"field", "op", "value"})
        )
    ]
    field = raw.get("field")
    spec: FieldSpec | None = None
    if not isinstance(field, str) or not field:
        errors.append(FieldError(f"{path}.field", "required: the name of a field"))
    elif field.startswith(TRAIT_PREFIX):
        name = trait_name(field.removeprefix(TRAIT_PREFIX))
        if name is None:
            errors.append(FieldError(f"{path}.field", TRAIT_NAME_RULE))
        else:
            field, spec = TRAIT_PREFIX + name, TRAIT
    elif field in FIELDS:
        spec = FIELDS[field]
    else:
        errors.append(FieldError(f"{path}.field", "unknown field"))
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        errors.append(FieldError(f"{path}.op", f"must be one of {', '.join(OPS)}"))
        op = None
    elif spec is not None and op not in spec.ops:
        allowed = ", ".join(o for o in OPS if o in spec.ops)
        errors.append(FieldError(f"{path}.op", f"does not fit field {field}; use one of {allowed}"))
        op = None
    if spec is None or op is None:
        raise _Bad(errors=errors)
    assert isinstance(field, str)
    try:
        value = _value(raw, field, op, spec, f"{path}.value", jurisdictions)
    except _Bad as bad:
        errors += bad.errors
    if errors:
        raise _Bad(errors=errors)
    return Leaf(field, op, value)


def _value(
    raw: dict[str, Any], field: str, op: str, spec: FieldSpec, vpath: str, jurisdictions: frozenset
) -> Any:
    if op == "exists":
        value = raw.get("value", True)
        if not isinstance(value, bool):
            raise _Bad(vpath, "must be true or false (or left out) for 'exists'")
        return value
    if "value" not in raw:
        raise _Bad(vpath, "required")
    check = _CHECKS[spec.kind]
    if op != "in":
        return check(field, op, raw["value"], vpath, jurisdictions)
    items = raw["value"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LIST:
        raise _Bad(vpath, f"must be a list of 1 to {MAX_LIST} values for 'in'")
    values, errors = [], []
    for i, item in enumerate(items):  # every bad value named, not only the first
        try:
            values.append(check(field, op, item, f"{vpath}[{i}]", jurisdictions))
        except _Bad as bad:
            errors += bad.errors
    if errors:
        raise _Bad(errors=errors)
    return tuple(values)


def _text(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> str:
    if not isinstance(v, str):
        raise _Bad(path, "must be a string")
    if field == "country":  # the codes ingest stores: "UK" would select nobody, unsaid
        try:
            return normalise_country(v)
        except InvalidInput as exc:
            raise _Bad(path, exc.errors[0].message) from None
    if field == "jurisdiction":
        code = v.strip().upper()
        if code not in jurisdictions:
            raise _Bad(path, "unknown jurisdiction")
        return code
    text = clean_text(v)
    if text is None or len(text) > 120:
        raise _Bad(path, "must be 1 to 120 characters")
    return text


def _name(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> str:
    if not isinstance(v, str) or not v.strip() or len(v) > 120:
        raise _Bad(path, "must be a string of 1 to 120 characters")
    return v.strip()


def _category(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> str:
    """Compared in the form events store categories in (cdp.labels.normalise_category)."""
    category = normalise_category(v) if isinstance(v, str) else None
    if category is None or len(category) > CATEGORY_MAX:
        raise _Bad(path, f"must be a string of 1 to {CATEGORY_MAX} characters")
    return category


def _count(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
        raise _Bad(path, "must be a whole number, 0 or more")
    return v


def _days(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_DAYS:
        raise _Bad(path, f"must be a whole number of days, 0 to {MAX_DAYS}")
    return v


def _money(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _Bad(path, 'must be a number or a decimal string such as "1999.90"')
    try:
        amount = Decimal(str(v).strip())
    except InvalidOperation:
        raise _Bad(path, 'must be a number or a decimal string such as "1999.90"') from None
    # amounts are stored to the cent (PostgreSQL NUMERIC(18, 2)): a finer one was rounded
    # there and not on SQLite, and one that rounded up to 10^16 overflowed (a 500)
    # copy_abs, not abs(): abs rounds in the decimal context, and an exponent beyond its range
    # ("1e999999999") raised decimal.Overflow (a 500)
    if not amount.is_finite() or amount.copy_abs() >= Decimal("1e16"):
        raise _Bad(path, "must be a finite amount below 10^16")
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise _Bad(path, 'must be an amount in whole cents at most, such as "1999.90"')
    return amount


_INT64 = 2**63  # the databases bind integers as 64-bit: a larger one was a 500


def _trait(field: str, op: str, v: Any, path: str, jurisdictions: frozenset[str]) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and not -_INT64 <= v < _INT64:
        raise _Bad(path, "must be an integer between -2^63 and 2^63 - 1")
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _Bad(path, f"must be a number for '{op}'")
        return v
    if isinstance(v, str) and len(v) > TRAIT_TEXT_MAX:  # no stored trait holds more
        raise _Bad(path, f"at most {TRAIT_TEXT_MAX} characters")
    if op == "contains":
        if not isinstance(v, str) or not v:
            raise _Bad(path, "must be a non-empty string for 'contains'")
        return trait_value(v)
    if isinstance(v, str | bool | int | float):  # eq, ne, in
        return trait_value(v)
    raise _Bad(path, "must be a string, number or boolean")


_CHECKS = {
    "text": _text,
    "source": _name,
    "categories": _category,
    "count": _count,
    "money": _money,
    "days": _days,
    "trait": _trait,
}


def to_json(cond: Condition) -> dict[str, Any]:
    """The canonical JSON form of a parsed condition (what is stored and shown)."""
    if isinstance(cond, AllOf):
        return {"all": [to_json(x) for x in cond.items]}
    if isinstance(cond, AnyOf):
        return {"any": [to_json(x) for x in cond.items]}
    if isinstance(cond, NotOf):
        return {"not": to_json(cond.item)}
    value = cond.value
    if isinstance(value, Decimal):
        value = str(value)
    elif isinstance(value, tuple):
        value = [str(x) if isinstance(x, Decimal) else x for x in value]
    return {"field": cond.field, "op": cond.op, "value": value}
