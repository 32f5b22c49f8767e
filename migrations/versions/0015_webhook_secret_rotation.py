"""A rotated webhook secret signs beside the new one until its overlap ends

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 09:30:00.000000

`POST /v1/webhooks/{id}/rotate-secret` keeps the replaced secret (encrypted under the system
key, as the secret is) in `previous_secret` until `previous_secret_until`; housekeeping empties
both after it. Both nullable: subscriptions stored before this revision were never rotated.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cdp.db.types import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.add_column(sa.Column("previous_secret", sa.LargeBinary(), nullable=True))
        batch.add_column(
            sa.Column("previous_secret_until", UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret")
