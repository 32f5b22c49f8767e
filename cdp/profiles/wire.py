"""Compact pickling for the dataclasses an import worker sends back, thousands per chunk.

The default pickling of a slotted dataclass goes through copyreg and a state dict per object;
this pickles the class and its field values, and unpickling calls the constructor.
"""

from __future__ import annotations

from typing import Any


def by_fields(obj: Any) -> tuple[type, tuple]:
    """`__reduce__` for a slotted dataclass whose constructor takes every field in order."""
    return type(obj), tuple([getattr(obj, name) for name in obj.__slots__])
