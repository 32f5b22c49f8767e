"""The consent ledger records whether an entry named its address or reached it through the profile

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 02:00:00.000000

`consent_ledger.via_profile`: on an entry about an address, false where the request named that
address, true where it reached the address as one of the addresses of a customer it named
otherwise (a profile id, an external id, an address of another kind, or every channel). While a
wrong merge stands, such a request reaches both customers' addresses; the unmerge then counts a
grant of that kind for neither customer and copies only the proof fields of such an entry's
evidence (cdp.profiles.unmerge, consent.evidence). The chain hashes the value where it is set
(consent.chain), so entries recorded before this revision (NULL: not known) keep their hash.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("consent_ledger") as batch:
        batch.add_column(sa.Column("via_profile", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Refused once an entry holds the value: its hash covers it, and dropping it would break
    the chain of the consent ledger."""
    recorded = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM consent_ledger WHERE via_profile IS NOT NULL"))
        .scalar()
    )
    if recorded:
        raise RuntimeError(
            f"{recorded} consent ledger entries record via_profile, which their hash covers: "
            "downgrading past 0018 would break the consent ledger's chain"
        )
    with op.batch_alter_table("consent_ledger") as batch:
        batch.drop_column("via_profile")
