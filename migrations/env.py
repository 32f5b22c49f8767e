"""Alembic environment: one history for SQLite and PostgreSQL.

Run programmatically by `cdp migrate` / `cdp serve` (a connection is passed in), or with the
`alembic` command, which opens its own async engine from CDP_DATABASE_URL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import cdp.db.tables
import cdp.matching.tables  # noqa: F401
import consent.audit_tables
import consent.dsr_tables
import consent.outbox.tables
import consent.tables  # noqa: F401  (registers tables)
from cdp.db.metadata import metadata

config = context.config
target_metadata = metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    from cdp.db.engine import make_engine
    from cdp.settings import Settings

    engine = make_engine(Settings.from_env().database_url)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    do_run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
