"""Event ids sealed: a blind index and ciphertext instead of the sender's plain id

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:00:00.000000

`POST /v1/events` is idempotent on (source, event_id), and the sender's event id was stored as
sent. Senders build ids from what they have at hand (`o-{email}`, `{phone}-{date}`), so an
email or a phone lay in plain text in `events`, readable in every backup after the
customer's erasure. New events keep the id as a blind index (`event_key`, unique per source,
for idempotency) and as ciphertext under the profile's data key (`event_ref`, for the access
request; an erasure destroys the key). `event_id` becomes nullable: the rows recorded before
this revision keep their plain id, partially indexed so that finding them is cheap, until
`cdp events seal` seals them (sealing needs the master key, which a migration does not hold).
Downgrade drops the new columns and is refused while a sealed row exists (its plain id is
gone from the database).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column("event_id", existing_type=sa.String(200), nullable=True)
        batch.add_column(sa.Column("event_key", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("event_ref", sa.LargeBinary(), nullable=True))
        batch.create_unique_constraint("uq_events_source_event_key", ["source", "event_key"])
    op.create_index(
        "ix_events_plain_id",
        "events",
        ["id"],
        sqlite_where=sa.text("event_id IS NOT NULL"),
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )


def downgrade() -> None:
    conn = op.get_bind()
    sealed = conn.execute(sa.text("SELECT 1 FROM events WHERE event_id IS NULL LIMIT 1")).first()
    if sealed is not None:
        raise RuntimeError(
            "events recorded since revision 0012 keep their event id sealed only: "
            "downgrading would leave them without one"
        )
    op.drop_index("ix_events_plain_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_source_event_key", type_="unique")
        batch.drop_column("event_ref")
        batch.drop_column("event_key")
        batch.alter_column("event_id", existing_type=sa.String(200), nullable=False)
