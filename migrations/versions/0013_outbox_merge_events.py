"""Merge and unmerge events in the webhook outbox

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 08:40:00.000000

`profile.merged` and `profile.unmerged` name two profiles: the survivor in `profile_id`, the
absorbed one in the new nullable `absorbed_profile_id` (null for every other kind, and for
every event stored before this revision). Kinds are strings: no other change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.add_column(sa.Column("absorbed_profile_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("absorbed_profile_id")
