"""Consent keyed by the profile itself (push, messenger), as SQL: the consent_state row whose
subject is b"p:" + the profile id's 16 bytes (`consent.subjects.profile_subject`)."""

from __future__ import annotations

from sqlalchemy import LargeBinary, String, and_, func, literal, type_coerce
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from cdp.db.tables import profiles
from consent.subjects import PROFILE_PREFIX


def profile_subject_is(state: FromClause, dialect: str) -> ColumnElement[bool]:
    """`state` (a consent_state alias) is the row of the profile of the enclosing query."""
    if dialect == "postgresql":
        prefix = literal(PROFILE_PREFIX, LargeBinary())
        subject = prefix.op("||", return_type=LargeBinary())(func.uuid_send(profiles.c.id))
        return state.c.subject == subject
    # SQLite stores UUIDs as 32 hex digits and (3.40) has no unhex(): reach the row by the
    # indexed profile_id (the ledger and merges write it together with the subject) and
    # still compare the subject exactly, in hex.
    hex_subject = literal(PROFILE_PREFIX.hex().upper(), String()) + func.upper(
        type_coerce(profiles.c.id, String())
    )
    return and_(state.c.profile_id == profiles.c.id, func.hex(state.c.subject) == hex_subject)
