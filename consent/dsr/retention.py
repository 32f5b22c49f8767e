"""Storage limitation (GDPR art. 5(1)(e); 152-FZ art. 5(7)): a customer who stopped being one is
erased once the period their jurisdiction's policy sets (`[retention] inactive_days`) has passed
without any activity. A jurisdiction that sets no period is never touched.

Activity is anything that happened for the customer, on any of their profiles (the surviving
one and every profile merged into it), at the latest of these times:
- an ingest created or updated a profile (`profiles.updated_at`; a merge too), or repeated one
  of its identifiers (`identities.last_seen_at`);
- an order or other event, when it occurred (`events.occurred_at`);
- a consent event, grant or withdrawal, on a profile or on an address the customer holds, when
  it occurred (`consent_ledger.occurred_at`). A standing grant is activity at the time it was
  given, nothing more: consent to marketing is not a purpose that needs the data kept (the
  suppression an erasure keeps goes on stopping marketing to the address), and a customer who
  gave it years ago and never came back has stopped being one. An entry on an address counts
  for whoever holds the address now (a reassigned number's old entries too: this errs towards
  keeping);
- an erasure request, received or decided (`dsr_requests.updated_at`): an officer who rejects
  a retention request keeps the customer for another period;
- an access request (`access_log`, `access_request.export`).
A customer is inactive when the latest of these is at least `inactive_days` days before `now`
(`is_inactive`, the rule in plain Python); `inactive_customers` is the same rule as one SQL
query that the database runs. Erased profiles, merged-away ones (they count with their
survivor) and customers with an open erasure request are skipped; so are profiles whose
jurisdiction has no policy file (no automatic erasure on a guess).

`run_retention` records for each inactive customer an erasure request through the ordinary
path (consent.dsr.requests.record_erasure_request: requested_by "operator", actor "retention",
a fixed reason naming the policy and the period), which the erasure worker completes with every
guarantee of an erasure. Each request is its own short transaction that looks again, under the
customer's lock, whether they are still inactive; a customer already requested is not
requested again (their open request excludes them), so runs are idempotent and safe while the
service runs. Activity recorded after that look (an order in the seconds before the worker runs)
does not stop the erasure, as it would not stop a customer's own request.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.cancellation import run_every
from cdp.db.engine import lock_keys
from cdp.db.tables import access_log, events, identities, profiles
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.segments.audience import tune
from consent.dsr import states
from consent.dsr.access import ACCESS_REQUEST_EXPORT
from consent.dsr.customer import customer_profile_ids, root_of
from consent.dsr.requests import ERASURE, customer_lock, record_erasure_request
from consent.dsr_tables import dsr_requests
from consent.tables import consent_ledger

log = structlog.get_logger(__name__)
ACTOR = "retention"
BATCH = 1000  # profiles looked at per query; each request is then its own transaction
INTERVAL = 86_400.0  # seconds between runs inside `cdp serve`, where a period is set


@dataclass(frozen=True, slots=True)
class Activity:
    """The latest time of each kind of activity of one customer (None: none of that kind)."""

    profile_updated: datetime | None = None
    identifier_seen: datetime | None = None
    event: datetime | None = None
    consent: datetime | None = None
    request: datetime | None = None
    access_request: datetime | None = None

    def latest(self) -> datetime | None:
        times = [t for t in (getattr(self, f.name) for f in fields(self)) if t is not None]
        return max(times, default=None)


def cutoff(now: datetime, inactive_days: int) -> datetime:
    """Activity at or before this time is too old to keep the customer."""
    return now - timedelta(days=inactive_days)


def is_inactive(activity: Activity, now: datetime, inactive_days: int) -> bool:
    """Nothing happened for the customer for `inactive_days` days: the latest activity is at
    least that long before `now`. No activity known at all: not inactive (no erasure without a
    fact to base it on; every profile has its `updated_at`)."""
    latest = activity.latest()
    return latest is not None and latest <= cutoff(now, inactive_days)


Members = Sequence[uuid.UUID] | Select


def _active_since(members: Members, since: datetime) -> ColumnElement[bool]:
    """Some activity (`Activity`, kind by kind) after `since` on one of the profiles `members`
    (ids, or a query of them)."""
    p, i, e, led, r, a = (
        profiles.alias("p_act"),
        identities.alias("i_act"),
        events.c,
        consent_ledger.c,
        dsr_requests.c,
        access_log.c,
    )
    addresses = select(i.c.bidx).where(
        i.c.profile_id.in_(members), i.c.kind.in_(("email", "phone"))
    )
    return or_(
        exists().where(p.c.id.in_(members), p.c.updated_at > since),
        exists().where(identities.c.profile_id.in_(members), identities.c.last_seen_at > since),
        exists().where(e.profile_id.in_(members), e.occurred_at > since),
        exists().where(
            or_(led.profile_id.in_(members), led.address_bidx.in_(addresses)),
            led.occurred_at > since,
        ),
        exists().where(r.profile_id.in_(members), r.updated_at > since),
        exists().where(a.profile_id.in_(members), a.action == ACCESS_REQUEST_EXPORT, a.at > since),
    )


def _open_erasure(members: Members) -> ColumnElement[bool]:
    r = dsr_requests.c
    return exists().where(r.kind == ERASURE, r.status.in_(states.OPEN), r.profile_id.in_(members))


def inactive_customers(
    jurisdiction: str, now: datetime, inactive_days: int, within: Members | None = None
) -> Select:
    """The surviving profile ids of the jurisdiction's inactive customers, in id order (among
    the profiles `within`: ids, or a query of them): `is_inactive` as one query. A merged
    profile points at its survivor directly (a merge re-points those merged into the absorbed
    one)."""
    root = profiles.alias("root")
    m = profiles.alias("member")
    members = (
        select(m.c.id).where(or_(m.c.id == root.c.id, m.c.merged_into == root.c.id)).correlate(root)
    )
    q = select(root.c.id).where(
        # not the status index: a window's ids are the few rows to look at, and without
        # planner statistics SQLite would walk every active profile for each window
        func.coalesce(root.c.status, "") == "active",
        root.c.jurisdiction == jurisdiction,
        ~_active_since(members, cutoff(now, inactive_days)),
        ~_open_erasure(members),
    )
    if within is not None:
        q = q.where(root.c.id.in_(within))
    return q.order_by(root.c.id)


def window(after: uuid.UUID | None, size: int) -> Select:
    """The next `size` profile ids after `after`, any status: read by the primary key, so that
    a run looks at each profile once, however many are inactive (a LIMIT on the filtered query
    made each page filter every profile again, as the planners sort by id after filtering)."""
    q = select(profiles.c.id).order_by(profiles.c.id).limit(size)
    return q if after is None else q.where(profiles.c.id > after)


async def _still_inactive(
    conn: AsyncConnection, pids: list[uuid.UUID], jurisdiction: str, since: datetime
) -> bool:
    """The same rule again for one customer, inside the transaction that records the request,
    over the profiles an erasure would take (merge chains followed)."""
    row = await conn.execute(
        select(profiles.c.id).where(
            profiles.c.id == pids[0],
            profiles.c.jurisdiction == jurisdiction,
            ~_active_since(pids, since),
            ~_open_erasure(pids),
        )
    )
    return row.first() is not None


def reason(jurisdiction: str, inactive_days: int) -> str:
    """The fixed text of a retention request (its transition's reason and its note)."""
    return (
        f"retention policy: no activity for {inactive_days} days "
        f"({jurisdiction} [retention] inactive_days = {inactive_days})"
    )


async def request_erasure(
    p: Platform, root: uuid.UUID, jurisdiction: str, now: datetime, inactive_days: int
) -> bool:
    """Record an erasure request for the customer whose surviving profile is `root`, if they
    still are inactive; False when not (active again, merged away, erased, already requested)."""
    async with p.db.write() as conn:
        await lock_keys(conn, [str(root)])  # the order submit_erasure takes them in
        if await root_of(conn, root) != (root, "active"):
            return False
        await lock_keys(conn, [customer_lock(root)])
        pids = await customer_profile_ids(conn, root)
        await tune(conn)
        if not await _still_inactive(conn, pids, jurisdiction, cutoff(now, inactive_days)):
            return False
        text = reason(jurisdiction, inactive_days)
        await record_erasure_request(
            conn,
            p,
            root,
            pids,
            identifier_kind="profile_id",
            requested_by="operator",
            actor=ACTOR,
            note=text,
            reason=text,
        )
    return True


@dataclass(slots=True)
class Outcome:
    """One jurisdiction's part of a run. `inactive_days` None: no period set, nobody looked at."""

    jurisdiction: str
    inactive_days: int | None
    inactive: int = 0  # found inactive (a dry run: all of them)
    requested: int = 0  # erasure requests recorded
    profile_ids: list[uuid.UUID] = field(default_factory=list)  # a dry run with ids


async def run_retention(
    p: Platform,
    now: datetime,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    with_ids: bool = False,
    batch: int = BATCH,
) -> list[Outcome]:
    """One pass over every jurisdiction, in code order. A dry run counts (and, `with_ids`,
    lists) the inactive customers and changes nothing; otherwise at most `limit` requests are
    recorded in all."""
    outcomes: list[Outcome] = []
    left = limit
    for code in sorted(p.policy.jurisdictions):
        days = p.policy.inactive_days(code)
        out = Outcome(code, days)
        outcomes.append(out)
        if days is None:
            continue
        if dry_run and not with_ids:
            q = inactive_customers(code, now, days).order_by(None).subquery()
            async with p.db.read() as conn:
                await tune(conn)  # no JIT: compiling the plan costs more than running it
                out.inactive = (
                    await conn.execute(select(func.count()).select_from(q))
                ).scalar_one()
            continue
        after: uuid.UUID | None = None
        while left is None or left > 0:
            async with p.db.read() as conn:
                await tune(conn)
                ids = list((await conn.execute(window(after, batch))).scalars().all())
                if not ids:
                    break
                after = ids[-1]
                query = inactive_customers(code, now, days, within=ids)
                page = list((await conn.execute(query)).scalars().all())
            for root in page:
                out.inactive += 1
                if dry_run:
                    out.profile_ids.append(root)
                elif await request_erasure(p, root, code, now, days):
                    out.requested += 1
                    if left is not None:
                        left -= 1
                        if left == 0:
                            break
        if out.requested:
            log.info("retention_requested", jurisdiction=code, requested=out.requested)
    return outcomes


def any_period(p: Platform) -> bool:
    """Whether any jurisdiction sets a retention period (else `cdp serve` runs no retention)."""
    return any(p.policy.inactive_days(code) is not None for code in p.policy.jurisdictions)


async def retention_periodically(p: Platform, interval_s: float = INTERVAL) -> None:
    """Inside `cdp serve` where a period is set: a run at start, then one a day. A failed run
    is logged (its error type) and the next one retries; what it requested stays requested."""
    await run_every(interval_s, lambda: run_retention(p, utcnow()), failed="retention_run_failed")
