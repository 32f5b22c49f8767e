"""Every bad part of a decoded body, where msgspec names only the first.

`msgspec.convert` stops at the first field that does not fit, so a body with a wrong
`birth_date`, a list where `traits` needs an object and no `source` was answered with one
error, and the client fixed and resent it one field at a time. API.md asks a 400 to name each
bad field. `every_error` converts again, field by field, where the value is an object for a
struct (and item by item in a list of them), to find the others. Each error is a msgspec
message and the path where it was found, in msgspec's own form (`$.consents[0].status`), so the
one translation into plain words (cdp.errors.decoded_field_error) serves both.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec

from cdp.errors import InvalidInput, decoded_field_error, repeatable

Found = tuple[str, str]  # (msgspec's message, its path: "$", "$.traits", "$.consents[0]")


def every_error(value: Any, kind: Any, *, strict: bool = True, path: str = "$") -> list[Found]:
    """The errors of converting `value` to `kind` (as `msgspec.convert(value, kind, strict)`
    does): none where it converts; else every field and item that fails on its own, or, where
    none does (a constraint on the whole), the first error as msgspec gives it."""
    try:
        msgspec.convert(value, kind, strict=strict)
    except msgspec.ValidationError as exc:
        first = _found(exc, path)
    else:
        return []
    inner = _unwrapped(kind, value)
    found: list[Found] = []
    if isinstance(inner, type) and issubclass(inner, msgspec.Struct) and isinstance(value, dict):
        found = _struct_errors(value, inner, strict, path)
    elif typing.get_origin(inner) is list and isinstance(value, list):
        (item,) = typing.get_args(inner) or (Any,)
        for i, v in enumerate(value):
            found += every_error(v, item, strict=strict, path=f"{path}[{i}]")
    elif typing.get_origin(inner) is dict and isinstance(value, dict):
        # msgspec names a bad value of a mapping `traits[...]`: name it by its key where the
        # key may be repeated (`traits.note`), else the mapping (`traits`)
        _, item = typing.get_args(inner) or (Any, Any)
        for k, v in value.items():
            where = f"{path}.{k}" if isinstance(k, str) and repeatable(k) else path
            found += every_error(v, item, strict=strict, path=where)
    return found or [first]


def _struct_errors(value: dict, kind: type[msgspec.Struct], strict: bool, path: str) -> list[Found]:
    found: list[Found] = []
    known = set()
    for f in msgspec.structs.fields(kind):
        known.add(f.encode_name)
        if f.encode_name in value:
            found += every_error(
                value[f.encode_name], f.type, strict=strict, path=f"{path}.{f.encode_name}"
            )
        elif f.required:
            found.append((f"Object missing required field `{f.encode_name}`", path))
    if kind.__struct_config__.forbid_unknown_fields:
        found += [(f"Object contains unknown field `{k}`", path) for k in value if k not in known]
    return found


def _unwrapped(kind: Any, value: Any) -> Any:
    """`kind` without Annotated constraints, and without None where `value` is not None."""
    while True:
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            kind = typing.get_args(kind)[0]
        elif origin in (typing.Union, types.UnionType) and value is not None:
            options = [a for a in typing.get_args(kind) if a is not type(None)]
            if len(options) != 1:
                return kind
            kind = options[0]
        else:
            return kind


def _found(exc: msgspec.ValidationError, path: str) -> Found:
    """msgspec's message and where, the path it gives appended to `path`."""
    message, at, where = str(exc).rpartition(" - at `")
    if not at:  # at the top of the converted value
        return str(exc), path
    return message, path + where.rstrip("`").removeprefix("$")


def invalid(
    value: Any, kind: Any, *, strict: bool = True, prefix: str = "", whole: str = "body"
) -> InvalidInput:
    """The 400 for `value` that does not convert to `kind`: each bad field named in plain
    words (`decoded_field_error`; `whole` names the value itself: a body, a batch's record, a
    file's row)."""
    errors = [
        decoded_field_error(message, path, prefix, whole)
        for message, path in every_error(value, kind, strict=strict)
    ]
    return InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
