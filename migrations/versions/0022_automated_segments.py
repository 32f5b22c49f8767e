"""A segment says whether its messages are sent by automatic dialling or mailing

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 08:30:00.000000

`segments.automated`: true where the sending tool dials or sends without a person choosing
each number. 38-FZ art. 18(2) forbids advertising sent so by phone and SMS in Russia, and a
jurisdiction's policy file lists the channels where it is forbidden (`no_automated_advertising`);
such a segment holds none of its customers on them. Segments saved before this revision were not
declared automated, and keep answering as before (false).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.add_column(
            sa.Column("automated", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("automated")
