"""Consent lapses are announced: a watermark per jurisdiction and purpose, grants by their time

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 20:00:00.000000

A grant older than its jurisdiction's validity period (`consent_valid_days`) lapses by the
clock alone, and a `consent.lapsed` webhook now says so (consent.outbox.lapses). The announcing
walks the grants of a purpose in the order of their time, from where it stopped:
`lapse_watermarks` holds that place per jurisdiction and purpose, and
`ix_consent_state_granted_since` (purpose, since, subject, channel, of the granted rows) serves
the walk on both databases. No row is written here: the first pass after a period is set
(or after this revision, where one already is) announces every grant lapsed by then, in
batches.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lapse_watermarks",
        sa.Column("jurisdiction", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column(
            "ledger_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("since", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.LargeBinary(length=48), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("updated_at", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jurisdiction", "purpose", name=op.f("pk_lapse_watermarks")),
    )
    with op.batch_alter_table("consent_state") as batch:
        batch.create_index(
            "ix_consent_state_granted_since",
            ["purpose", "since", "subject", "channel"],
            unique=False,
            postgresql_where=sa.text("status = 'granted'"),
            sqlite_where=sa.text("status = 'granted'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("consent_state") as batch:
        batch.drop_index("ix_consent_state_granted_since")
    op.drop_table("lapse_watermarks")
