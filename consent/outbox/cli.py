"""`cdp dispatch` (a webhook and NATS dispatcher worker), `cdp webhooks replay --since` and
`cdp webhooks prune`."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Any

import click


@click.command()
@click.option(
    "--once", is_flag=True, help="announce the lapses due, deliver what is due now, then exit"
)
def dispatch(once: bool) -> None:
    """Deliver consent events to webhook subscribers (and NATS when CDP_NATS_URL is set).

    Runs until SIGINT or SIGTERM. Any number of workers may run beside `cdp serve`, which runs
    one too unless CDP_WEBHOOK_DISPATCHER=off.
    """
    from cdp.cli_support import run, with_platform
    from consent.outbox.dispatcher import open_dispatcher, outstanding, run_dispatcher
    from consent.outbox.lapses import announce_lapses

    async def forever(p: Any) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_dispatcher(p, stop)

    async def drain(p: Any) -> int:
        await announce_lapses(p)
        async with open_dispatcher(p) as dispatcher:
            await dispatcher.drain(max_seconds=600)
        return await outstanding(p)

    if once:
        left = run(lambda: with_platform(drain))
        click.echo(f"done; {left} events or deliveries still waiting (retries later)")
        return
    run(lambda: with_platform(forever))


def _timestamp(_ctx: Any, _param: Any, value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("an RFC 3339 time, e.g. 2026-11-22T10:00:00Z") from None
    if at.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-11-22T10:00:00Z")
    try:
        at.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+10:56 is before year 1 in UTC (a traceback)
        raise click.BadParameter("out of range") from None
    return at


@click.group()
def webhooks() -> None:
    """Consent-change webhooks."""


@webhooks.command("replay")
@click.option("--since", required=True, callback=_timestamp, help="RFC 3339 time, inclusive")
@click.option("--subscription", default=None, help="only this subscription id")
@click.option("--stream", is_flag=True, help="publish to NATS JetStream again too")
def replay_cmd(since: datetime, subscription: str | None, stream: bool) -> None:
    """Send again every event recorded since a time, with the same event ids (a receiver that
    already has one can skip it).

    Only deliveries still kept can be sent again: delivered ones are pruned 30 days after
    delivery, dead ones 90 days after their last try (CDP_WEBHOOK_KEEP_DELIVERED_DAYS,
    CDP_WEBHOOK_KEEP_DEAD_DAYS), so replay reaches back that far at most."""
    from cdp.cli_support import run, with_platform
    from cdp.ids import parse_uuid
    from consent.outbox.replay import replay

    sid = None
    if subscription is not None:
        sid = parse_uuid(subscription)
        if sid is None:
            raise click.BadParameter("not a subscription id", param_hint="--subscription")

    result = run(
        lambda: with_platform(lambda p: replay(p, since, subscription_id=sid, stream=stream))
    )
    click.echo(f"requeued {result.deliveries} deliveries")
    if stream:
        click.echo(f"requeued {result.streamed} events for NATS")
    click.echo("a running dispatcher (cdp serve or cdp dispatch) sends them")


@webhooks.command("prune")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="days to keep delivered deliveries and unused events "
    "(default CDP_WEBHOOK_KEEP_DELIVERED_DAYS, 30)",
)
@click.option(
    "--dead-older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="days to keep dead and cancelled deliveries (default CDP_WEBHOOK_KEEP_DEAD_DAYS, 90)",
)
def prune_cmd(older_than: float | None, dead_older_than: float | None) -> None:
    """Delete delivered (and, after longer, dead) deliveries and their events past retention,
    and subscriptions deleted as long ago as dead deliveries are kept, once nothing refers to them.

    Pending deliveries are never deleted. The dispatcher does this every hour by itself; this
    runs it now. Pruned deliveries can no longer be replayed."""
    from cdp.cli_support import failure, run, with_platform
    from cdp.errors import DomainError
    from consent.outbox.config import DispatchConfig
    from consent.outbox.retention import prune_outbox

    try:
        cfg = DispatchConfig.from_env()
    except DomainError as exc:  # a setting that cannot work: one line, as `run` says its own
        raise failure(exc) from None
    result = run(
        lambda: with_platform(
            lambda p: prune_outbox(
                p, cfg, keep_delivered_days=older_than, keep_dead_days=dead_older_than
            )
        )
    )
    click.echo(
        f"deleted {result.deliveries} deliveries and {result.events} events"
        f" (and {result.subscriptions} deleted subscriptions)"
    )
