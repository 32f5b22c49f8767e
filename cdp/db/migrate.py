"""Apply Alembic migrations from code (used by `cdp migrate`, `cdp serve` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

from cdp.db.engine import Database

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class SchemaFromNewerRelease(Exception):
    """The database was migrated by a newer release (a revision this code does not know: the
    software was downgraded, or an older process started against an upgraded database).
    Alembic said so in a traceback of a hundred lines; every `cdp` command says it in one."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"the database's schema is at revision {revision}, which this release of cdp does "
            "not know: a newer release migrated it. Run that release (or a later one) against "
            "this database, or point CDP_DATABASE_URL at a database of this release"
        )
        self.revision = revision


def _check_known(connection: Connection, cfg: Config) -> None:
    script = ScriptDirectory.from_config(cfg)
    for revision in MigrationContext.configure(connection).get_current_heads():
        try:
            known = script.get_revision(revision) is not None
        except CommandError:  # alembic's ResolutionError: no such revision here
            known = False
        if not known:
            raise SchemaFromNewerRelease(revision)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several servers may start at once: only one migrates, the others wait.
        connection.execute(text("SELECT pg_advisory_xact_lock(7306147270213301)"))
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    _check_known(connection, cfg)
    command.upgrade(cfg, "head")


async def migrate(db: Database) -> None:
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
        async with conn.begin():
            await conn.run_sync(_upgrade)
