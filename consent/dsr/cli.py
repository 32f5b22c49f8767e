"""`cdp dsr ...`: run the erasure worker once or as a loop, and list requests."""

from __future__ import annotations

import sys
from typing import Any

import click

from cdp.cli_support import run_on_platform


@click.group("dsr")
def dsr() -> None:
    """Data subject requests (erasure)."""


@dsr.command("run")
def dsr_run() -> None:
    """Finish every received or in_progress erasure request, then exit (1 if any failed)."""
    from consent.dsr.worker import run_pending

    summary = run_on_platform(run_pending)
    click.echo(
        f"completed: {summary.completed}  rejected: {summary.rejected}  failed: {summary.failed}"
    )
    for request_id in summary.failed_ids:
        click.echo(f"  failed: {request_id}", err=True)
    if summary.failed:
        sys.exit(1)


@dsr.command("worker")
@click.option("--interval", default=30.0, show_default=True, type=float, help="seconds")
def dsr_worker(interval: float) -> None:
    """Keep finishing erasure requests until interrupted."""
    from consent.dsr.worker import run_forever

    try:
        run_on_platform(lambda p: run_forever(p, interval))
    except KeyboardInterrupt:
        click.echo("stopped")


@dsr.command("list")
@click.option(
    "--status",
    type=click.Choice(["received", "in_progress", "completed", "rejected"]),
    help="only requests in this status",
)
@click.option("--overdue", is_flag=True, help="only open requests past their due date")
def dsr_list(status: str | None, overdue: bool) -> None:
    """Erasure requests, oldest first (ids and dates only)."""
    from consent.dsr.requests import list_requests

    async def go(p: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        async with p.db.read() as conn:
            while True:
                page = await list_requests(
                    conn, status=status, overdue=True if overdue else None, cursor=cursor
                )
                items.extend(page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    return items

    items, policy = run_on_platform(lambda p: _with_policy(p, go(p)))
    if not items:  # on stderr: stdout holds one line per request, for scripts to read
        click.echo("no erasure requests" + (" match" if status or overdue else ""), err=True)
    for item in items:
        click.echo(list_line(item, policy))


async def _with_policy(p: Any, items: Any) -> tuple[list[dict[str, Any]], Any]:
    return await items, p.policy


def list_line(item: dict[str, Any], policy: Any) -> str:
    """One request of `cdp dsr list`. Its dates are days of the jurisdiction whose deadline it
    follows (consent.dsr.deadlines: RU counts Moscow's days), as the deadline counts them: in
    UTC, a request received at 01:30 on Saturday in Moscow read 'received' on Friday, and one
    due at 01:30 Moscow time on its last day read 'due' the day before."""
    from consent.dsr.deadlines import zone_of

    zone = zone_of(policy, item["deadline_jurisdiction"])
    received, due = (
        item[k] if zone is None else item[k].astimezone(zone) for k in ("received_at", "due_at")
    )
    flag = "  OVERDUE" if item["overdue"] else ""
    return (
        f"{item['request_id']}\t{item['status']}\t{item['jurisdiction']}\t"
        f"received {received:%Y-%m-%d}\tdue {due:%Y-%m-%d}{flag}"
    )


@click.group("retention")
def retention() -> None:
    """Storage limitation: erase customers inactive for their jurisdiction's period."""


@retention.command("run")
@click.option(
    "--dry-run", is_flag=True, help="count the inactive customers per jurisdiction; change nothing"
)
@click.option(
    "--ids", is_flag=True, help="with --dry-run: list their profile ids too (never names)"
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="record at most this many erasure requests in this run (default: all)",
)
def retention_run(dry_run: bool, ids: bool, limit: int | None) -> None:
    """Record an erasure request (requested_by operator, actor retention) for each customer
    with no activity for their jurisdiction's `[retention] inactive_days`; the erasure worker
    (`cdp serve`, `cdp dsr run`) completes them. A second run requests nobody twice."""
    from cdp.ids import utcnow
    from consent.dsr.retention import run_retention

    if ids and not dry_run:
        raise click.UsageError("--ids lists who a dry run would request: add --dry-run")
    outcomes = run_on_platform(
        lambda p: run_retention(p, utcnow(), dry_run=dry_run, limit=limit, with_ids=ids)
    )
    if all(o.inactive_days is None for o in outcomes):
        click.echo("no jurisdiction sets [retention] inactive_days: nobody to erase", err=True)
        return
    for o in outcomes:
        if o.inactive_days is None:
            click.echo(f"{o.jurisdiction}: no retention period set")
        elif dry_run:
            click.echo(
                f"{o.jurisdiction}: {o.inactive} inactive for {o.inactive_days} days or more "
                "(dry run: nothing requested)"
            )
            for pid in o.profile_ids:
                click.echo(f"{o.jurisdiction}\t{pid}")
        else:
            click.echo(
                f"{o.jurisdiction}: {o.requested} erasure requests recorded (inactive for "
                f"{o.inactive_days} days or more)"
            )
