"""The address of an opt-out no customer held, sealed in its outbox event until sent

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 09:00:00.000000

`outbox_events.address_sealed` (nullable): the address of an `opt_out` event whose address the
platform had never seen, encrypted under the system key (consent.outbox.sealed), for the
subscriptions allowed to see addresses; nulled once sent. Partially indexed: few rows hold one.
Events stored before this revision have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.add_column(sa.Column("address_sealed", sa.LargeBinary(), nullable=True))
    op.create_index(
        "ix_outbox_events_sealed",
        "outbox_events",
        ["seq"],
        sqlite_where=sa.text("address_sealed IS NOT NULL"),
        postgresql_where=sa.text("address_sealed IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_events_sealed", table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("address_sealed")
