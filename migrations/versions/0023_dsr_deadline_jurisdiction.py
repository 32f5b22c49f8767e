"""An erasure request records the jurisdiction whose deadline binds it, and the policy version

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 11:00:00.000000

`dsr_requests.deadline_jurisdiction`: of the jurisdiction a request names and the customer's
own, the one whose deadline comes first (naming a laxer law does not release the operator from
the customer's); its due date, and its extension, follow it. Requests recorded before this
revision were bound by the jurisdiction they name, so they are backfilled with it.
`dsr_requests.policy_version`: the policy version that set the due date (POLICIES.md: which
version decided what); unknown (null) for requests recorded before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dsr_requests") as batch:
        batch.add_column(sa.Column("deadline_jurisdiction", sa.String(16), nullable=True))
        batch.add_column(sa.Column("policy_version", sa.String(64), nullable=True))
    op.execute("UPDATE dsr_requests SET deadline_jurisdiction = jurisdiction")
    with op.batch_alter_table("dsr_requests") as batch:
        batch.alter_column("deadline_jurisdiction", existing_type=sa.String(16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("dsr_requests") as batch:
        batch.drop_column("policy_version")
        batch.drop_column("deadline_jurisdiction")
