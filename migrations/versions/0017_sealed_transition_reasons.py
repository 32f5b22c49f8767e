"""An officer's reason for an extension or a rejection is sealed under the customer's data key

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 12:00:00.000000

`dsr_transitions.reason_sealed`, `reason_owner`, `reason_key_id`: the free-text reason of an
extension or a rejection, encrypted under the data key of the request's profile and bound to the
transition's id; the chain hashes them with the transition (consent/dsr/chain.py), so the
history still verifies once the key is destroyed. `reason_copy`, `reason_copy_key_id`: the same
reason under the owner's later key (an unmerge gives the holder a new key); not hashed.

Transitions recorded before this revision keep their plain reason and their hash: the hash
covers the plaintext, so encrypting it would break the chain (and a reason unreadable after an
erasure could no longer be verified). Nothing is rewritten here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dsr_transitions") as batch:
        batch.add_column(sa.Column("reason_sealed", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("reason_owner", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("reason_key_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reason_copy", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("reason_copy_key_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Refused while a sealed reason exists: dropping it would leave transitions whose hash
    covers what is gone, and the chain would no longer verify."""
    sealed = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM dsr_transitions WHERE reason_owner IS NOT NULL"))
        .scalar()
    )
    if sealed:
        raise RuntimeError(
            f"{sealed} request transitions hold a sealed reason, which their hash covers: "
            "downgrading past 0017 would break the chain of request transitions"
        )
    with op.batch_alter_table("dsr_transitions") as batch:
        batch.drop_column("reason_copy_key_id")
        batch.drop_column("reason_copy")
        batch.drop_column("reason_key_id")
        batch.drop_column("reason_owner")
        batch.drop_column("reason_sealed")
