"""A profile records whether a record gave its jurisdiction

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 03:00:00.000000

`profiles.jurisdiction_given`: true where a record gave the jurisdiction (`"jurisdiction":
"EU"`), false where it came from a country or the default. A later record's country changes
only a jurisdiction no record gave, and a merge prefers a given jurisdiction to one from a
country (cdp.profiles.ingest, cdp.profiles.merge): a shop's delivery country no longer puts a
customer a CRM said was under EU rules under US ones. Profiles stored before this revision hold
NULL (not known) and are treated as before, as if no record gave it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("jurisdiction_given", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("jurisdiction_given")
