"""What an operator watches, read from the database at each scrape of GET /metrics: figures
that ask for action, never anything about a customer (ids, addresses and names stay out).

- data subject requests open and overdue (an overdue erasure is a breach of the policy's
  deadline: alert on it);
- webhook deliveries pending and dead, and how old the oldest pending one is (sending tools
  that do not hear of opt-outs keep mailing people who left);
- the consent ledger's length;
- upgrade steps still to run (`cdp keys split`, `cdp events seal`);
- whether the key store answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from cdp.db.partial import among, equals
from cdp.event_ids import plain_ids_left
from cdp.ids import utcnow
from cdp.keyring import whole_keys_left
from cdp.platform import Platform
from consent.dsr import states
from consent.dsr_tables import dsr_requests
from consent.outbox.tables import ENDED, outbox_events, webhook_deliveries
from consent.tables import consent_ledger


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


async def figures(p: Platform) -> list[Figure]:
    now = utcnow()
    r, d, oe = dsr_requests.c, webhook_deliveries.c, outbox_events.c
    out: list[Figure] = []
    async with p.db.read() as conn:
        open_by_status = dict(
            (
                await conn.execute(
                    select(r.status, func.count())
                    .where(r.status.in_(states.OPEN))
                    .group_by(r.status)
                )
            ).all()
        )
        overdue = (
            await conn.execute(
                select(func.count()).where(r.status.in_(states.OPEN), r.due_at < now)
            )
        ).scalar_one()
        # each count on its partial index (cdp.db.partial): the delivered ones, most of the
        # table, are never read
        deliveries = {
            "pending": (
                await conn.execute(select(func.count()).where(equals(d.status, "pending")))
            ).scalar_one(),
            "dead": (
                await conn.execute(
                    select(func.count()).where(among(d.status, ENDED), d.status == "dead")
                )
            ).scalar_one(),
        }
        # from the pending deliveries to their events: joined, SQLite could walk every event
        # in time order looking for the first with a pending delivery
        oldest = (
            await conn.execute(
                select(func.min(oe.recorded_at)).where(
                    oe.seq.in_(select(d.event_seq).where(equals(d.status, "pending")))
                )
            )
        ).scalar_one()
        ledger = (await conn.execute(select(func.max(consent_ledger.c.seq)))).scalar_one() or 0
    for status in states.OPEN:
        out.append(
            Figure(
                "cdp_dsr_open_requests",
                "Erasure requests not yet completed or rejected, by status",
                open_by_status.get(status, 0),
                (("status", status),),
            )
        )
    out.append(
        Figure("cdp_dsr_overdue_requests", "Open erasure requests past their due date", overdue)
    )
    for status in ("pending", "dead"):
        out.append(
            Figure(
                "cdp_webhook_deliveries",
                "Webhook deliveries still to send (pending) or given up on (dead)",
                deliveries.get(status, 0),
                (("status", status),),
            )
        )
    out.append(
        Figure(
            "cdp_webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery's event (0: none pending)",
            0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0),
        )
    )
    out.append(Figure("cdp_consent_ledger_entries", "Entries in the consent ledger", ledger))
    # the checks `cdp serve` warns by (cdp.keyring, cdp.event_ids)
    steps = (
        ("keys_split", await whole_keys_left(p.db)),
        ("events_seal", await plain_ids_left(p.db)),
    )
    for step, pending in steps:
        out.append(
            Figure(
                "cdp_upgrade_step_pending",
                "1 while an upgrade step is still to run (cdp keys split, cdp events seal)",
                1 if pending else 0,
                (("step", step),),
            )
        )
    out.append(Figure("cdp_key_store_up", "1 when the key store answers", await _key_store_up(p)))
    return out


async def _key_store_up(p: Platform) -> int:
    if p.keys.store is None:
        return 0
    try:
        await p.keys.store.ping()
    except Exception:  # any failure: it does not answer
        return 0
    return 1
