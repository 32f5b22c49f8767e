"""events.identity_id: the identity that named an event

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:55:00.000000

An unmerge gave back the events a merge had moved, but the events recorded after the merge
stayed with the profile that kept its id, whoever's they were: an event did not record which
identifier named it. Events recorded before this revision have none, and stay as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("identity_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("events", "identity_id")
