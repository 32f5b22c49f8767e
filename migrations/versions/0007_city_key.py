"""profiles.city_key: the city as segment rules compare it, in any case

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 00:30:00.000000

A segment rule on `city` compared the stored spelling exactly, so `city eq "Москва"` left out
the customers a CRM had sent as "МОСКВА". Rules now compare `city_key`, the city trimmed, inner
whitespace collapsed and case-folded, in NFC (cdp.labels.city_key), written beside the city.
Neither database folds case as Python does (SQLite's lower() knows ASCII only), so existing
rows get their key here, one UPDATE per distinct city. The rule is copied here as it is at this
revision (a migration must not change when the code does later). Downgrade drops the column.
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

profiles = sa.table("profiles", sa.column("city", sa.String()), sa.column("city_key", sa.String()))


def city_key(city: str) -> str | None:
    text = " ".join(unicodedata.normalize("NFC", city).split())
    return unicodedata.normalize("NFC", text.casefold()) or None


def upgrade() -> None:
    op.add_column("profiles", sa.Column("city_key", sa.String(360), nullable=True))
    conn = op.get_bind()
    p = profiles.c
    for (city,) in conn.execute(sa.select(p.city).where(p.city.is_not(None)).distinct()).all():
        conn.execute(sa.update(profiles).where(p.city == city).values(city_key=city_key(city)))


def downgrade() -> None:
    op.drop_column("profiles", "city_key")  # SQLite drops a column itself since 3.35
