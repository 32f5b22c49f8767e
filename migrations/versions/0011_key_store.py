"""Data keys split with a key store kept outside the database

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 06:00:00.000000

A backup taken before an erasure held the customer's wrapped data key and, restored, gave the
customer back: crypto-shredding did not reach copies of the database. New data keys are split
in two (cdp.key_store): one half stays in `profile_keys` (`split` true), the other is kept in a
key store outside the database, and an erasure destroys it there. Keys stored before this
revision are whole (`split` false, partially indexed so that finding them is cheap) until
`cdp keys split` moves their other half out; they keep working meanwhile.

`key_store_link` names the key store the database's keys are split with (filled at the first
start-up) and the last of the store's erasures this database has honoured.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("profile_keys") as batch:
        batch.add_column(
            sa.Column("split", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_profile_keys_whole",
        "profile_keys",
        ["profile_id"],
        sqlite_where=sa.text("NOT split"),
        postgresql_where=sa.text("NOT split"),
    )
    op.create_table(
        "key_store_link",
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("reconciled_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_key_store_link")),
    )


def downgrade() -> None:
    op.drop_table("key_store_link")
    op.drop_index("ix_profile_keys_whole", table_name="profile_keys")
    with op.batch_alter_table("profile_keys") as batch:
        batch.drop_column("split")
