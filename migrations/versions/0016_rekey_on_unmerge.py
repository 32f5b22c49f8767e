"""An unmerge gives the holder a new data key; events remember the profile id that named them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 23:45:00.000000

`key_share_owners`: a share in the key store that is not kept under its profile's own id (a
data key after the first, cdp.profiles.rekey), and each profile whose erasure destroys it: the
holder's current key is destroyed with the holder; a key retired by an unmerge with any
customer who was ever merged into the holder (what was recorded for them while merged is under
it, in the database's older copies). `events.named_profile_id`: the profile id a sender named an
event by (an unmerge gives the event back to that profile); NULL for events named by an
identifier, and for those recorded before this revision.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cdp.db.types import UTCDateTime

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("named_profile_id", sa.Uuid(), nullable=True))
    op.create_table(
        "key_share_owners",
        sa.Column("share_id", sa.Uuid(), nullable=False),
        sa.Column("profile_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("share_id", "profile_id"),
    )
    op.create_index("ix_key_share_owners_profile_id", "key_share_owners", ["profile_id"])


def downgrade() -> None:
    op.drop_index("ix_key_share_owners_profile_id", table_name="key_share_owners")
    op.drop_table("key_share_owners")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("named_profile_id")
