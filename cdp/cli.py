"""The `cdp` command line (see API.md, CLI)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import click

from cdp.cli_support import failure, migrate_database, run, with_platform
from cdp.errors import DomainError
from cdp.logging import configure_logging
from cdp.matching.cli import match as match_command
from cdp.settings import Settings
from consent.audit.cli import audit as audit_commands
from consent.dsr.cli import dsr as dsr_commands
from consent.dsr.cli import retention as retention_commands
from consent.outbox.cli import dispatch, webhooks


@click.group()
def main() -> None:
    """Consent and customer data platform."""
    configure_logging()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=int, help="port to listen on")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="processes answering requests (PostgreSQL only; the database connections are "
    "shared out among them)",
)
def serve(host: str, port: int, workers: int) -> None:
    """Apply pending migrations, then serve the API."""
    from api.app import create_app
    from api.server import CannotListen, listen
    from api.server import serve as serve_app
    from cdp.crypto.fields import CryptoError
    from cdp.event_ids import plain_ids_left
    from cdp.keyring import whole_keys_left
    from consent.audit.signing import signer_for
    from consent.outbox.config import DispatchConfig

    try:  # every setting the service and its background work read, before anything starts
        settings = served_settings(Settings.from_env(), os.environ, host, port)
        DispatchConfig.from_env()
    except DomainError as exc:  # e.g. an unknown CDP_ENV, an interval that is not a number
        click.echo(f"error: {failure(exc).format_message()}", err=True)
        sys.exit(2)
    if workers > 1 and (settings.is_sqlite or settings.key_store_url.startswith("sqlite")):
        click.echo(f"error: --workers: {SQLITE_WORKERS}", err=True)
        sys.exit(2)

    async def leftovers(p: Any) -> tuple[bool, bool]:
        return await whole_keys_left(p.db), await plain_ids_left(p.db)

    try:  # refuse to start on a wrong master key or a missing production key, before binding
        whole, plain_ids = run(lambda: with_platform(leftovers))
        signer_for(settings)
    except CryptoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:  # a policy file or a database that cannot be opened
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    if whole:
        click.echo(WHOLE_KEYS_WARNING, err=True)
    if plain_ids:
        click.echo(PLAIN_EVENT_IDS_WARNING, err=True)
    try:
        sock = listen(host, port)
    except CannotListen as exc:  # a port in use: one line, as for every setting above
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if workers > 1:
        from api.workers import serve_workers

        sys.exit(serve_workers(settings, host, port, workers, sock))
    try:
        serve_app(create_app(settings), host, port, sock, settings.client_timeout)
    except KeyboardInterrupt:  # Ctrl+C: uvicorn stopped gracefully, then raised it again
        click.echo("stopped", err=True)  # (click would say "Aborted!" and exit 1)


SQLITE_WORKERS = (
    "several workers need PostgreSQL (CDP_DATABASE_URL, and CDP_KEY_STORE_URL if set): SQLite "
    "has one writer at a time, and workers in separate processes would queue for it"
)


WHOLE_KEYS_WARNING = (
    "warning: some data keys are still stored whole in the database (from before the key "
    "store): a backup taken before such a customer's erasure stays readable. Run "
    "`cdp keys split` once (docs/design.md, 'Backups and the key store')."
)

PLAIN_EVENT_IDS_WARNING = (
    "warning: some events recorded before this release keep the sender's event id in plain "
    "text (senders often build them from an email or a phone). Run `cdp events seal` once "
    "(docs/design.md, 'Backups and the key store')."
)


def served_settings(settings: Settings, env: Mapping[str, str], host: str, port: int) -> Settings:
    """Without CDP_PUBLIC_URL the links the service hands out (unsubscribe, manage links, the
    page address in consent evidence) name the address it serves on, not a fixed port."""
    if env.get("CDP_PUBLIC_URL"):
        return settings
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return dataclasses.replace(settings, public_url=f"http://{shown}:{port}")


@main.command()
def migrate() -> None:
    """Apply migrations."""
    from cdp.db.engine import Database

    async def go() -> None:
        settings = Settings.from_env()
        db = Database(settings.database_url)
        try:
            await migrate_database(db, settings)
        finally:
            await db.dispose()

    run(go)
    click.echo("migrations applied")


@main.group()
def keys() -> None:
    """API keys and the master key."""


@keys.command("create")
@click.option("--name", required=True, help="who uses the key (unique; shown in the access log)")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["admin", "ingest", "marketing", "compliance"]),
    help="what the key may do (API.md names each endpoint's roles)",
)
def keys_create(name: str, role: str) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from cdp.apikeys import create_key

    key = run(lambda: with_platform(lambda p: create_key(p.db, name, role)))
    click.echo(f"created key {name!r} with role {role}; store it now, it is not shown again:")
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Every key: name, role, prefix, created, and active or revoked (never the key)."""
    from cdp.apikeys import list_keys

    rows = run(lambda: with_platform(lambda p: list_keys(p.db)))
    for name, role, prefix, created, revoked in rows:
        state = f"revoked {revoked:%Y-%m-%d}" if revoked else "active"
        click.echo(f"{name}\t{role}\t{prefix}…\t{created:%Y-%m-%d}\t{state}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke the active key called NAME; a running service refuses it within seconds."""
    from cdp.apikeys import revoke_key

    run(lambda: with_platform(lambda p: revoke_key(p.db, name)))
    from cdp.apikeys import AUTH_TTL

    click.echo(f"revoked {name} (a running service refuses it within {AUTH_TTL:g} seconds)")


@keys.command("rotate-master")
@click.option(
    "--new-key-env",
    default="CDP_NEW_MASTER_KEY",
    show_default=True,
    help="environment variable holding the new master key (base64 of 32 bytes)",
)
def keys_rotate_master(new_key_env: str) -> None:
    """Re-wrap every data key under a new master key (field data is not touched)."""
    import os

    from sqlalchemy.exc import DBAPIError

    from cdp.crypto.fields import CryptoError
    from cdp.crypto.master import MasterKey
    from cdp.db.messages import database_message
    from cdp.keyring import rotate_master_key

    new_text = os.environ.get(new_key_env)
    if not new_text:
        raise click.UsageError(f"set {new_key_env} to the new master key")
    try:
        new = MasterKey.from_base64(new_text)
    except CryptoError:
        message = f"{new_key_env} is not a master key (base64 of 32 bytes)"
        raise click.ClickException(message) from None

    async def go() -> int:
        # not through the platform: resuming a rotation, the key ring is under the new key
        # already and the old one (CDP_MASTER_KEY) would be refused as not this database's
        from cdp.crypto.master import load_master_key
        from cdp.db.engine import Database

        settings = Settings.from_env()
        old = load_master_key(
            settings.master_key, production=settings.is_production, dev_dir=settings.dev_key_dir
        )
        if new.key_id == old.key_id:
            in_use = "CDP_MASTER_KEY" if settings.master_key else "the development master key"
            raise click.ClickException(
                f"{new_key_env} is the master key in use ({in_use}): nothing to rotate"
            )
        db = Database(settings.database_url)
        try:
            await migrate_database(db, settings)
            return await rotate_master_key(db, old, new)
        except DBAPIError as exc:  # one transaction: rolled back, or committed unanswered
            raise click.ClickException(
                f"the rotation stopped ({database_message(exc)}): run the same command again "
                "to finish it (it re-wraps whatever is still under the old key)"
            ) from None
        finally:
            await db.dispose()

    count = run(go)
    click.echo(f"re-wrapped {count} data keys; new master key id {new.key_id}")
    click.echo("now set CDP_MASTER_KEY to the new key and restart every service")


@keys.command("split")
def keys_split() -> None:
    """Keep the other half of data keys stored whole (from before the key store) in the key
    store, so that erasing those customers reaches older backups too. Once, after upgrading;
    resumable, and safe while the service runs."""
    from cdp.keyring import split_whole_keys

    async def go(p: Any) -> int:
        return await split_whole_keys(p.db, p.keys.master, p.keys.store)

    count = run(lambda: with_platform(go))
    click.echo(f"split {count} data keys; every data key now has its other half in the key store")


@main.group("events")
def events_commands() -> None:
    """Behavioural events."""


@events_commands.command("seal")
def events_seal() -> None:
    """Seal the event ids of events recorded before this release (kept as their senders sent
    them): a blind index for idempotency and ciphertext under the customer's data key, so
    that an erasure reaches them. Once, after upgrading; resumable, and safe while the
    service runs."""
    from cdp.event_ids import plain_ids_left, seal_plain_ids

    async def go(p: Any) -> tuple[int, bool]:
        return await seal_plain_ids(p.db, p.keys), await plain_ids_left(p.db)

    count, left = run(lambda: with_platform(go))
    click.echo(f"sealed {count} event ids")
    if left:  # their customer's data key is gone: an erasure under way deletes them
        click.echo("some remain, of customers being erased: run it again once they are")
        sys.exit(1)


DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}


def file_options(command: Callable[..., None]) -> Callable[..., None]:
    """FILE, --rejects, --encoding and --delimiter: how `cdp import` and `cdp events import`
    read a file (`cdp.import_file`)."""
    for option in reversed(
        (
            click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
            click.option(
                "--rejects",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="where the rejected rows go (row, field, reason; never a value) "
                "[default: FILE.rejects.csv]",
            ),
            click.option(
                "--encoding",
                default="utf-8",
                show_default=True,
                help="the file's text encoding, e.g. cp1251 for a Russian Excel CSV",
            ),
            click.option(
                "--delimiter",
                type=click.Choice(sorted(DELIMITER_NAMES)),
                default=None,
                help="the CSV's column separator [default: read off the header]",
            ),
        )
    ):
        command = option(command)
    return command


def run_file_import(
    description: str,
    runner: Callable[..., Awaitable[Any]],
    file: Path,
    source: str,
    rejects: Path | None,
    encoding: str,
    delimiter: str | None,
) -> Any:
    """`runner(p, file, source, ...)` on the platform, with a progress bar on stderr; its
    summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=None)

        async def go(p: Any) -> Any:
            return await runner(
                p,
                file,
                source,
                rejects_path=rejects,
                on_progress=lambda n: bar.update(task, completed=n),
                on_total=lambda n: bar.update(task, total=n),
                encoding=encoding,
                delimiter=DELIMITER_NAMES[delimiter] if delimiter else None,
            )

        return run(lambda: with_platform(go))


def echo_rejects(summary: Any) -> None:
    click.echo(f"rejects: {summary.rejects_path}")
    for reason, n in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {n}\t{reason}")


@main.command("import")
@click.option("--source", required=True, help="the system the file comes from")
@file_options
def import_cmd(
    file: Path, source: str, rejects: Path | None, encoding: str, delimiter: str | None
) -> None:
    """Bulk upsert a CSV (header row) or NDJSON file."""
    from cdp.importer import run_import

    summary = run_file_import("importing", run_import, file, source, rejects, encoding, delimiter)
    click.echo(
        f"rows: {summary.rows}  created: {summary.created}  joined existing: {summary.joined}  "
        f"merged: {summary.merged}  rejected rows: {summary.rejected_rows}  "
        f"consents recorded: {summary.consents_recorded}  "
        f"consents rejected: {summary.consents_rejected}  "
        f"identifiers ignored: {summary.identifiers_ignored}"
    )
    echo_rejects(summary)


@events_commands.command("import")
@click.option(
    "--source",
    required=True,
    help="the system the events come from (a repeated event id of it is recognised)",
)
@file_options
def events_import(
    file: Path, source: str, rejects: Path | None, encoding: str, delimiter: str | None
) -> None:
    """Import events (an order history) from a CSV (header row) or NDJSON file: each row a
    POST /v1/events body without source. Running it again is safe."""
    from cdp.events_import import run_event_import

    summary = run_file_import(
        "importing events", run_event_import, file, source, rejects, encoding, delimiter
    )
    click.echo(
        f"rows: {summary.rows}  recorded: {summary.recorded}  "
        f"already recorded: {summary.repeated}  rejected rows: {summary.rejected_rows}"
    )
    echo_rejects(summary)


@main.command()
@click.option(
    "--customers",
    default=3000,
    show_default=True,
    type=click.IntRange(min=1),
    help="how many customers to make",
)
@click.option(
    "--seed", default=7, show_default=True, type=int, help="the same seed makes the same data"
)
def demo(customers: int, seed: int) -> None:
    """Fill an empty database with a realistic synthetic customer base."""
    from cdp.demo import fill_demo

    async def go(p: Any) -> dict[str, int]:
        return await fill_demo(p, customers=customers, seed=seed)

    counts = run(lambda: with_platform(go))
    click.echo(" ".join(f"{k}: {v}" for k, v in counts.items()))


main.add_command(dsr_commands)
main.add_command(retention_commands)
main.add_command(audit_commands)
main.add_command(dispatch)
main.add_command(webhooks)
main.add_command(match_command)

if __name__ == "__main__":
    main()
