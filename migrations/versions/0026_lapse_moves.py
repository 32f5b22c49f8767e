"""Consent lapses of customers who move: the moves to look at, the grants announced

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-08 10:00:00.000000

A grant of a customer whose jurisdiction changes (or whose address changes holder in a merge
or an unmerge) after the new jurisdiction's watermark passed it was never announced as lapsed
(consent.outbox.lapses). `lapse_moves` holds the customers to look at again, written where the
change is made and deleted by the next pass; `lapses_announced` the grants (by ledger seq)
whose lapse has been announced, so that each is announced once however often its customer
moves. No row is written here: grants announced before this revision are not in it, and a
move of their customer into another jurisdiction with a period may announce them once more.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lapses_announced",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_lapses_announced")),
    )
    op.create_table(
        "lapse_moves",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("profile_id", sa.Uuid(), nullable=False),
        sa.Column("recorded_at", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_lapse_moves")),
    )


def downgrade() -> None:
    op.drop_table("lapse_moves")
    op.drop_table("lapses_announced")
