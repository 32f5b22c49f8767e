"""A withdrawal of an address no one held suppresses it, as an opt-out of it does

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-08 12:00:00.000000

A withdrawal through POST /v1/consents naming an email or phone that no customer held is
recorded on the address alone (consent.service.record_consent). It now also suppresses the
address for its purpose and channel, as an opt-out of an unseen address does, so that it
concerns whoever turns out to hold the address: their push and messenger, and for every channel
the phone or email they come with. The state check (consent.audit.addresses) counts such a
withdrawal as an opt-out, whose suppression must be there.

Filled here for the withdrawals recorded before: each (address, purpose, channel) gets the time
and source of its latest one (with reason "withdrawal"), unless a suppression of it is as late
or later already; an earlier one takes them, as a repeated opt-out does. No webhook event is
written for these.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the withdrawals of the address, purpose and channel of suppression row `s` (or `k`) recorded
# on no customer
_UNHELD = (
    "l.profile_id IS NULL AND l.status = 'withdrawn' AND l.address_bidx = {t}.bidx "
    "AND l.purpose = {t}.purpose AND l.channel = {t}.channel"
)
_LATEST_AT = "(SELECT MAX(l.occurred_at) FROM consent_ledger l WHERE " + _UNHELD + ")"
_LATEST_SOURCE = (
    "(SELECT l.source FROM consent_ledger l WHERE "
    + _UNHELD
    + " ORDER BY l.occurred_at DESC, l.seq DESC LIMIT 1)"
)


def upgrade() -> None:
    t = "suppressions"
    op.execute(
        f"UPDATE suppressions SET reason = 'withdrawal', "
        f"source = {_LATEST_SOURCE.format(t=t)}, at = {_LATEST_AT.format(t=t)} "
        f"WHERE at < {_LATEST_AT.format(t=t)}"
    )
    op.execute(
        "INSERT INTO suppressions (bidx, purpose, channel, reason, source, at, created_at) "
        "SELECT k.bidx, k.purpose, k.channel, 'withdrawal', "
        + _LATEST_SOURCE.format(t="k")
        + ", k.at, k.created_at FROM (SELECT l.address_bidx AS bidx, l.purpose, l.channel, "
        "MAX(l.occurred_at) AS at, MAX(l.recorded_at) AS created_at FROM consent_ledger l "
        "WHERE l.profile_id IS NULL AND l.status = 'withdrawn' AND l.address_bidx IS NOT NULL "
        "GROUP BY l.address_bidx, l.purpose, l.channel) k "
        "WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.bidx = k.bidx "
        "AND s.purpose = k.purpose AND s.channel = k.channel)"
    )


def downgrade() -> None:
    pass  # the suppressions stay: an opt-out is never lifted
