"""When each address was erased is kept where a later opt-out cannot overwrite it

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 04:00:00.000000

`address_erasures` (bidx, at): an address (or external id) erased with its customer, at the
erasure request's completion time. Until now the erasure's suppression of the address dated
it, and a later opt-out of the same address, purpose and channel by whoever holds it since
overwrote that row (a suppression keeps its latest time and reason): the erased customer's
consent history was then taken for the new holder's (their access export showed it with their
address) and vanished from the erased customer's audit.

Filled from what still dates an erasure: every erasure suppression, and every address a
completed erasure request's customer was recorded on in the consent ledger up to its
completion and that is suppressed since (the erasure suppressed every address it erased; where
a later opt-out has already overwritten that suppression, the opt-out's is later).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cdp.db.types import UTCDateTime

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "address_erasures",
        sa.Column("bidx", sa.LargeBinary(48), nullable=False),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bidx", "at"),
    )
    op.execute(
        "INSERT INTO address_erasures (bidx, at) "
        "SELECT bidx, at FROM suppressions WHERE reason = 'erasure' "
        "UNION "
        "SELECT l.address_bidx, r.completed_at FROM consent_ledger l "
        "JOIN dsr_requests r ON r.profile_id = l.profile_id "
        "WHERE r.kind = 'erasure' AND r.status = 'completed' AND l.address_bidx IS NOT NULL "
        "AND l.recorded_at <= r.completed_at AND EXISTS (SELECT 1 FROM suppressions s "
        "WHERE s.bidx = l.address_bidx AND s.at >= r.completed_at)"
    )


def downgrade() -> None:
    op.drop_table("address_erasures")
