"""The access log's pages and its reads by key are found by index

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 18:00:00.000000

Scale review (README, 2026-12-07). The audit API pages the access log by (at, id), and the
console lists a key's newest entries; with an index on `at` alone, a page deep into the log
read every entry before it (PostgreSQL, 90,000 rows for a page 90 % into a log of 100,000),
and `actor=` read the whole log. `ix_access_log_at` becomes (at, id), and (actor, at, id) is
added.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_index("ix_access_log_at")
        batch.create_index("ix_access_log_at_id", ["at", "id"], unique=False)
        batch.create_index("ix_access_log_actor_at_id", ["actor", "at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_index("ix_access_log_actor_at_id")
        batch.drop_index("ix_access_log_at_id")
        batch.create_index("ix_access_log_at", ["at"], unique=False)
