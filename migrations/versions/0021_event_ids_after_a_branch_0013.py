"""0012's sealed event ids, where a database skipped 0012

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 05:30:00.000000

0013 was first written on a review branch (commit 3e4c7af, review-webhooks) with down_revision
0011, while 0012 (sealed event ids) landed beside it; the merge re-chained 0013 after 0012. A
database that the branch's code migrated is stamped 0013 without having run 0012, and Alembic
takes 0012 for applied: `events` kept a NOT NULL `event_id` and had no `event_key` or
`event_ref`, so after an upgrade every POST /v1/events, import and access export failed (a 503
saying the database was not reachable) and no event id was ever sealed.

This revision does what 0012 does where its columns are missing, and nothing where they are
there (every database that followed main). It reads the schema rather than the revision, so it
stays right wherever it is chained. Downgrade does nothing: the columns are 0012's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    columns = {c["name"] for c in inspector.get_columns("events")}
    if "event_key" in columns:
        return
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
    pass
