"""What a database error may say to an operator: the error's type and the database's own first
line. SQLAlchemy hides bound values, and a PostgreSQL message names a constraint or an object,
never a value (values are in its DETAIL line, which is left out)."""

from __future__ import annotations


def database_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    first = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0][:200]}" if first else type(exc).__name__
