"""profiles.merged_into indexed for merged profiles only

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:20:00.000000

The index held every profile, and nearly all have no `merged_into`. SQLite's statistics then
said that a key matches about a thousand rows, and the planner scanned the whole table for
`merged_into IN (...)`, which `cdp import` runs for every chunk that joins existing customers
(8 ms a chunk at 100,000 profiles, growing with the table). A partial index holds only merged
profiles, so its statistics are right, and it is smaller. PostgreSQL gets the same index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MERGED = sa.text("merged_into IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_profiles_merged_into", table_name="profiles")
    op.create_index(
        "ix_profiles_merged_into",
        "profiles",
        ["merged_into"],
        sqlite_where=MERGED,
        postgresql_where=MERGED,
    )


def downgrade() -> None:
    op.drop_index("ix_profiles_merged_into", table_name="profiles")
    op.create_index("ix_profiles_merged_into", "profiles", ["merged_into"])
