"""segment export records; indexes for outbox retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DELIVERED = "status = 'delivered'"
ENDED = "status IN ('dead', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "segment_exports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("segment_id", sa.Uuid(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("started_at", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", cdp.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_exports")),
    )
    with op.batch_alter_table("segment_exports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_segment_exports_segment_id_id", ["segment_id", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_segment_exports_started_at"), ["started_at"], unique=False
        )

    op.create_table(
        "segment_export_chunks",
        sa.Column("export_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("members", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("export_id", "seq", name=op.f("pk_segment_export_chunks")),
    )

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_delivered",
            ["delivered_at"],
            unique=False,
            postgresql_where=sa.text(DELIVERED),
            sqlite_where=sa.text(DELIVERED),
        )
        batch_op.create_index(
            "ix_webhook_deliveries_ended",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text(ENDED),
            sqlite_where=sa.text(ENDED),
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_webhook_deliveries_ended",
            postgresql_where=sa.text(ENDED),
            sqlite_where=sa.text(ENDED),
        )
        batch_op.drop_index(
            "ix_webhook_deliveries_delivered",
            postgresql_where=sa.text(DELIVERED),
            sqlite_where=sa.text(DELIVERED),
        )

    op.drop_table("segment_export_chunks")
    with op.batch_alter_table("segment_exports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_exports_started_at"))
        batch_op.drop_index("ix_segment_exports_segment_id_id")

    op.drop_table("segment_exports")
