"""Identity resolution as an invariant: the same records, in the same order, end in the same
profiles whichever way they arrive (one POST /v1/profiles after another, /v1/profiles/batch cut
anywhere, `cdp import` of CSV or NDJSON with any chunk and transaction sizes), the merge guards
included; and without the guards in play, in any order. Records are generated (hypothesis) from
small pools of customers' identifiers, each written in the spellings a user would expect to be
one identifier (case and spaces of an email, national and E.164 forms of a phone). Each profile
has the first name, city and trait given last (latest non-empty value wins), a segment sends
to its email and its phone seen last, and advertising by email only where the consents its
records carried (granted or withdrawn, dated or not) allow it, however its records came."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import random
import uuid

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as case
from hypothesis import strategies as st

import cdp.importer as importer
from cdp.importer import run_import
from cdp.profiles.identity import lookup_bidx, resolve_profile_ids
from cdp.segments.members import select_rows
from cdp.segments.service import build_definition
from tests.helpers import hypothesis_on_loop

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
_spaces = itertools.count(100)  # one namespace of identifiers per run of a path


# A record: (email #, spelling), (phone #, spelling), external id #, first name, city, and
# optionally a consent to advertising by email (status, occurred_at or None) for its email and
# a trait `tier`
EMAIL = st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 2)))
PHONE = st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 3)))
EXTERNAL = st.one_of(st.none(), st.integers(0, 2))
NAME = st.sampled_from([None, "Анна", "Olga"])
CITY = st.sampled_from([None, "Omsk", "Tver"])
CONSENT = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["granted", "withdrawn"]),
        st.sampled_from([None, "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z"]),
    ),
)
TIER = st.sampled_from([None, "gold", "silver"])
RECORD = st.tuples(EMAIL, PHONE, EXTERNAL, NAME, CITY, CONSENT, TIER).filter(
    lambda r: r[0] is not None or r[1] is not None or r[2] is not None
)
RECORDS = st.lists(RECORD, min_size=1, max_size=10)


def email(n: int, ns: int, spelling: int = 0) -> str:
    plain = f"cust{n}.ns{ns}@example.com"
    return [plain, f"  Cust{n}.NS{ns}@Example.COM ", plain.upper()][spelling]


def phone(n: int, ns: int, spelling: int = 0) -> tuple[str, str | None]:
    """(the number as written, the record's country)"""
    d = national(n, ns)
    return [
        (f"+7 {d[:3]} {d[3:]}", None),
        (f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}", None),  # the default jurisdiction's: RU
        (f"8{d}", "RU"),
        (f"+7({d[:3]}){d[3:]}", "KZ"),
    ][spelling]


def national(n: int, ns: int) -> str:
    return f"9{ns:06d}{n}17"


def bodies(records, ns: int, source: str = "crm") -> list[dict]:
    out = []
    for e, ph, ext, name, city, *more in records:
        consent, tier = [*more, None, None][:2]
        body: dict = {"source": source}
        if e is not None:
            body["email"] = email(e[0], ns, e[1])
            if consent:
                body["consents"] = [marketing_email(*consent)]
        if ph is not None:
            body["phone"], country = phone(ph[0], ns, ph[1])
            if country:
                body["country"] = country
        if ext is not None:
            body["external_id"] = f"C-{ext}-{ns}"
        if name:
            body["first_name"] = name
        if city:
            body["city"] = city
        if tier:
            body["traits"] = {"tier": tier}
        out.append(body)
    return out


def marketing_email(status: str, occurred_at: str | None) -> dict:
    evidence = {"wording_id": "w-1", "method": "checkbox"}
    consent = {"purpose": "marketing", "channel": "email", "status": status, "evidence": evidence}
    if occurred_at:
        consent["occurred_at"] = occurred_at
    return consent


async def partition(platform, ns: int, client=None, keys=None):  # type: ignore[no-untyped-def]
    """Which pooled identifiers share a profile (by the survivor that holds them), and which
    are held by none; with a client, each profile's first name, city and traits too (the
    latest given), and the email and phone a segment sends it to (for service, and for
    advertising by email: where the consents its records carried allow it)."""
    source = "crm"
    ix = platform.keys.indexer
    idents = {
        **{("email", n): ix.email(email(n, ns).strip().lower()) for n in range(4)},
        **{("phone", n): ix.phone("+7" + national(n, ns)) for n in range(4)},
        **{("ext", n): ix.external_id(source, f"C-{n}-{ns}") for n in range(3)},
    }
    async with platform.db.read() as conn:
        held = await lookup_bidx(conn, list(idents.values()))
        survivors = await resolve_profile_ids(conn, set(held.values()))
    groups: dict = {}
    for name, bidx in idents.items():
        pid = held.get(bidx)
        groups.setdefault(None if pid is None else survivors[pid], set()).add(name)
    unheld = groups.pop(None, set())
    if client is None:
        return sorted(sorted(g) for g in groups.values()), sorted(unheld)
    named = []
    for pid, g in groups.items():
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 200, r.text
        sends_to = await member_addresses(platform, pid, idents)
        view = r.json()
        named.append((sorted(g), view["first_name"], view["city"], view["traits"], sends_to))
    return sorted(named), sorted(unheld)


async def member_addresses(platform, pid, idents) -> list:  # type: ignore[no-untyped-def]
    """Which of its pooled identifiers a segment sends this customer to: for `service` by
    email and by sms (every address may receive them: the one seen last), and for advertising
    by email (an address whose consent allows it), or None."""
    names = {bidx: name for name, bidx in idents.items()}
    out = []
    for purpose, channel in (("service", "email"), ("service", "sms"), ("marketing", "email")):
        d = build_definition(platform, purpose, channel, {"all": []})
        just_before = uuid.UUID(int=pid.int - 1)
        async with platform.db.read() as conn:
            got = await select_rows(
                conn, platform, d, after=just_before, until=pid, limit=1, now=None
            )
        out.append(names.get(got.rows[0][2]) if got.rows else None)
    return out


async def one_by_one(client, keys, all_bodies):  # type: ignore[no-untyped-def]
    for body in all_bodies:
        r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
        assert r.status_code in (200, 201), r.text


async def in_batches(client, keys, all_bodies, cuts):  # type: ignore[no-untyped-def]
    edges = sorted({0, len(all_bodies), *(c % (len(all_bodies) + 1) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        r = await client.post(
            "/v1/profiles/batch", json={"records": all_bodies[start:end]}, headers=keys["ingest"]
        )
        assert r.status_code == 200, r.text
        assert all("error" not in x for x in r.json()["results"]), r.text


async def imported(platform, path, records, ns, fmt, workers=0):  # type: ignore[no-untyped-def]
    rows = bodies(records, ns)
    if fmt == "csv":
        columns = ["external_id", "email", "phone", "country", "first_name", "city"]
        consent = "consent.marketing.email"
        parts = {"": "status", ".wording_id": "wording_id", ".method": "method"}
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    *columns,
                    *(consent + part for part in parts),
                    consent + ".occurred_at",
                    "traits.tier",
                ]
            )
            for row in rows:
                c = (row.get("consents") or [{}])[0]
                given = {**c, **c.get("evidence", {})}
                w.writerow(
                    [row.get(k, "") for k in columns]
                    + [given.get(k, "") for k in parts.values()]
                    + [c.get("occurred_at", ""), row.get("traits", {}).get("tier", "")]
                )
    else:
        text = "\n".join(
            json.dumps({k: v for k, v in row.items() if k != "source"}, ensure_ascii=False)
            for row in rows
        )
        path.write_text(text + "\n", encoding="utf-8")
    summary = await run_import(platform, path, "crm", workers=workers)
    assert summary.rejected_rows == 0, summary


GUARDS = {
    "the policy's": {},
    # a profile holds one identifier of a kind, and a record merges two profiles at most
    "tight": {"max_identities_per_kind": 1, "max_profiles_per_merge": 2},
}


@pytest.mark.parametrize("guards", list(GUARDS))
async def test_the_same_records_make_the_same_profiles_whichever_way_they_arrive(
    platform, client, keys, tmp_path, monkeypatch, guards
):
    identity = msgspec.structs.replace(platform.policy.identity, **GUARDS[guards])
    monkeypatch.setattr(platform, "policy", dataclasses.replace(platform.policy, identity=identity))

    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(
            RECORDS,
            st.lists(st.integers(0, 10), max_size=3),
            st.integers(1, 4),
            st.integers(1, 6),
        )
        # two customers of one shop met in one batch, and were merged without a review
        @case(
            [
                (None, None, 1, None, None),
                (None, (1, 0), 0, None, None),
                (None, (1, 0), 1, None, None),
            ],
            [],
            1,
            1,
        )
        # two profiles a chunk made at one time, merged by the next: the city given last lost
        @case(
            [
                (None, (0, 0), None, None, "Omsk"),
                ((0, 0), None, None, None, "Tver"),
                ((0, 0), (0, 0), None, None, None),
            ],
            [],
            2,
            1,
        )
        # a chunk's record that started a profile of its own was given an id after the profile
        # another record of the chunk started: the next chunk's record linking the two was
        # stored in the later one (the lowest id is the oldest)
        @case(
            [
                (None, (1, 0), 0, None, None),
                ((3, 0), None, 1, None, None),
                (None, None, 1, None, None),
                ((3, 0), (1, 0), None, None, "Omsk"),
            ],
            [],
            3,
            1,
        )
        def example(records, cuts, chunk, txn_rows) -> None:  # type: ignore[no-untyped-def]
            monkeypatch.setattr(importer, "CHUNK", chunk)
            monkeypatch.setattr(importer, "TXN_ROWS", txn_rows)
            results = {}
            ns = next(_spaces)
            run(one_by_one(client, keys, bodies(records, ns)))
            results["one by one"] = run(partition(platform, ns, client, keys))
            ns = next(_spaces)
            run(in_batches(client, keys, bodies(records, ns), cuts))
            results["batches"] = run(partition(platform, ns, client, keys))
            for fmt in ("csv", "ndjson"):
                ns = next(_spaces)
                run(imported(platform, tmp_path / f"f{ns}.{fmt}", records, ns, fmt))
                results[fmt] = run(partition(platform, ns, client, keys))
            assert all(r == results["one by one"] for r in results.values()), results

        example()

    await hypothesis_on_loop(test)


async def test_worker_processes_keep_the_records_order_in_the_profiles_ids(
    platform, client, keys, tmp_path, monkeypatch
):
    """A worker seals each record for the profile it would start, with its id: a record that
    starts a profile of its own must not get a lower id (the oldest) than the profile an earlier
    record of its chunk started. Here the third record's profile was older than the first's,
    and the last record, linking the two, was stored in it."""
    records = [
        ((3, 0), None, 1, None, None),
        (None, None, 1, None, None),
        (None, (1, 0), 0, None, None),
        ((3, 0), (1, 0), None, None, "Omsk"),
    ]
    monkeypatch.setattr(importer, "CHUNK", 3)
    ns = next(_spaces)
    await one_by_one(client, keys, bodies(records, ns))
    expected = await partition(platform, ns, client, keys)
    sends_to = [("email", 3), None, None]  # service email, service sms, advertising email
    assert ([("email", 3), ("ext", 1)], None, "Omsk", {}, sends_to) in expected[0]
    ns = next(_spaces)
    await imported(platform, tmp_path / "w.csv", records, ns, "csv", workers=1)
    assert await partition(platform, ns, client, keys) == expected


@pytest.mark.parametrize("known", [True, False], ids=["known before", "new in the batch"])
async def test_the_address_a_segment_sends_to_is_the_same_whichever_way_records_arrive(
    platform, client, keys, tmp_path, known
):
    """A customer's member address is their address seen last: a record that brings a new
    email and, after it, a record repeating the first one leave the first one as the address
    seen last, one request each, in one batch or in one chunk of an import, whether the first
    was stored before or by an earlier record of the batch. (In a batch all were stamped with
    the batch's time, and the new email won as the one created later.)"""
    records = [
        ((0, 0), None, 0, None, None),
        ((1, 0), None, 0, None, None),
        ((0, 0), None, None, None, None),
    ]
    sent_to = {}
    for path in ("one by one", "batch", "import"):
        ns = next(_spaces)
        later = records
        if known:
            await one_by_one(client, keys, bodies(records[:1], ns))
            later = records[1:]
        if path == "one by one":
            await one_by_one(client, keys, bodies(later, ns))
        elif path == "batch":
            await in_batches(client, keys, bodies(later, ns), [])
        else:
            await imported(platform, tmp_path / f"records{ns}.csv", later, ns, "csv")
        (customer,), _ = await partition(platform, ns, client, keys)
        sent_to[path] = customer[-1][0]  # by email, for service
    assert sent_to == dict.fromkeys(("one by one", "batch", "import"), ("email", 0))


def components(records) -> list[list]:  # type: ignore[no-untyped-def]
    """What deterministic resolution promises without the guards: connected components of the
    identifiers records carry together."""
    parent: dict = {}

    def find(x):  # type: ignore[no-untyped-def]
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for e, ph, ext, *_ in records:
        names = [
            *([("email", e[0])] if e else []),
            *([("phone", ph[0])] if ph else []),
            *([("ext", ext)] if ext is not None else []),
        ]
        for a in names:
            parent[find(a)] = find(names[0])
    groups: dict = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return sorted(sorted(g) for g in groups.values())


async def test_without_the_guards_any_order_gives_the_connected_customers(platform, client, keys):
    """Each external id from a source of its own (no two customers of one shop) and at most
    three identifiers a record (no merge of more profiles than the policy allows): the guards
    never apply, and the profiles are the connected components whatever the order."""

    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(RECORDS, st.randoms(use_true_random=False), st.lists(st.integers(0, 10), max_size=3))
        def example(records, rnd: random.Random, cuts) -> None:  # type: ignore[no-untyped-def]
            expected = components(records)
            shuffled = list(records)
            rnd.shuffle(shuffled)
            for order, batched in ((records, False), (shuffled, False), (shuffled, True)):
                ns = next(_spaces)
                # the external id C-k comes from source s-k alone
                sources = [f"s-{r[2]}" if r[2] is not None else "web" for r in order]
                sent = bodies(order, ns)
                for body, source in zip(sent, sources, strict=True):
                    body["source"] = source
                if batched:
                    run(in_batches(client, keys, sent, cuts))
                else:
                    run(one_by_one(client, keys, sent))
                got, unheld = run(partition_by_source(platform, ns))
                assert unheld == [] or set(unheld) <= unused(records), (unheld, records)
                assert got == expected, (order, got, expected)

        example()

    await hypothesis_on_loop(test)


def unused(records) -> set:  # type: ignore[no-untyped-def]
    used = {("email", r[0][0]) for r in records if r[0]} | {
        ("phone", r[1][0]) for r in records if r[1]
    }
    used |= {("ext", r[2]) for r in records if r[2] is not None}
    every = {(k, n) for k, top in (("email", 4), ("phone", 4), ("ext", 3)) for n in range(top)}
    return every - used


async def partition_by_source(platform, ns):  # type: ignore[no-untyped-def]
    ix = platform.keys.indexer
    idents = {
        **{("email", n): ix.email(email(n, ns).strip().lower()) for n in range(4)},
        **{("phone", n): ix.phone("+7" + national(n, ns)) for n in range(4)},
        **{("ext", n): ix.external_id(f"s-{n}", f"C-{n}-{ns}") for n in range(3)},
    }
    async with platform.db.read() as conn:
        held = await lookup_bidx(conn, list(idents.values()))
        survivors = await resolve_profile_ids(conn, set(held.values()))
    groups: dict = {}
    for name, bidx in idents.items():
        pid = held.get(bidx)
        groups.setdefault(None if pid is None else survivors[pid], set()).add(name)
    unheld = groups.pop(None, set())
    return sorted(sorted(g) for g in groups.values()), sorted(unheld)
