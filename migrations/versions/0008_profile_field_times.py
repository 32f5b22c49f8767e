"""profiles.field_times: when each value of a profile was given

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 00:40:00.000000

A merge took every value from the profile updated last as a whole, so a new city on one profile
made its old name win over a name given to the other since. The time of each value, where it
differs from the profile's `updated_at`, is kept here (cdp.profiles.freshness); a row without it
has all its values from `updated_at`, as every existing row is taken to have.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("profiles", sa.Column("field_times", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("profiles", "field_times")
