"""Trait string values in Unicode NFC

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 04:00:00.000000

A rule `traits.tier eq "Серебряный"` compared the stored string exactly, so it missed every
customer whose source had sent `й` as `и` and a combining breve (a Mac export, some 1C
configurations): one value to the customer and the marketer, two to the database. Ingest now
stores trait strings in NFC and rules compare in NFC (cdp.labels.trait_value); existing rows
are rewritten here, a thousand profiles at a time in id order, only those with a value that
changes. The rule is copied here as it is at this revision. Downgrade changes nothing: NFC is
the same text, and the decomposed spelling was never wanted.
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

profiles = sa.table("profiles", sa.column("id", sa.Uuid()), sa.column("traits", sa.JSON()))


def nfc(traits: dict) -> dict:
    return {
        k: unicodedata.normalize("NFC", v) if isinstance(v, str) else v for k, v in traits.items()
    }


def upgrade() -> None:
    conn = op.get_bind()
    p = profiles.c
    after = None
    while True:
        query = sa.select(p.id, p.traits).where(p.traits.is_not(None)).order_by(p.id).limit(1000)
        if after is not None:
            query = query.where(p.id > after)
        rows = conn.execute(query).all()
        if not rows:
            return
        for pid, traits in rows:
            if isinstance(traits, dict) and (fixed := nfc(traits)) != traits:
                conn.execute(sa.update(profiles).where(p.id == pid).values(traits=fixed))
        after = rows[-1][0]


def downgrade() -> None:
    pass
