"""consent_evidence_copies: evidence re-encrypted for the customer an unmerge gives it back to

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:40:00.000000

A grant recorded while two customers were wrongly merged has its evidence encrypted under the
merged profile's data key. When the merge is undone the address goes back to the other
customer, and erasing the first customer destroyed that key: the other customer's proof of
consent became unreadable. The unmerge now stores a copy of the evidence under the key of the
customer the address went back to (consent/evidence.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consent_evidence_copies",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("owner", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", cdp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", "owner", name=op.f("pk_consent_evidence_copies")),
    )
    op.create_index(
        "ix_consent_evidence_copies_owner", "consent_evidence_copies", ["owner"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_consent_evidence_copies_owner", table_name="consent_evidence_copies")
    op.drop_table("consent_evidence_copies")
