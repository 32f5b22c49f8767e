"""console sessions signed out before they expired

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_signouts",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("expires_at", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_console_signouts")),
    )


def downgrade() -> None:
    op.drop_table("console_signouts")
