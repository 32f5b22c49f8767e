"""Systematic fault injection: each write is made to fail at its N-th database statement (main
database and key store), at its N-th commit (before and after the database commits), and at
the N-th call of its encryption or outbox step, for N = 1, 2, ... until it runs through
(tests/faults.py samples N; CDP_FAULTS_EXHAUSTIVE=1 tries every one).

After each failure: the caller saw an error (an RFC 9457 body without the personal data it
sent, or a CLI failure that says what is stored), nothing half-done is visible
(tests/fault_invariants.py), and the same request sent again succeeds with the end state a
run without the failure gives.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cdp.crypto.fields import FieldCipher
from cdp.profiles.identifiers import parse_identifier
from consent.dsr.requests import submit_erasure
from tests.fault_invariants import assert_invariants
from tests.faults import EXHAUSTIVE, Counter, Faults, InjectedFault, failing_call, sweep
from tests.helpers import segment_members

GRANT_EVIDENCE = {"wording_id": "newsletter-v3", "method": "checkbox"}


@pytest.fixture
async def faults(platform):  # type: ignore[no-untyped-def]
    f = Faults(platform)
    yield f
    f.close()


def targets(f: Faults) -> dict[str, tuple[Counter, Any]]:
    """Where a fault is injected: (counter, engine faults whose `after_commit` to set)."""
    out = {
        "main-statement": (f.main.statements, None),
        "main-commit": (f.main.commits, (f.main, False)),
        "main-commit-lost-answer": (f.main.commits, (f.main, True)),
    }
    if f.store is not None:
        out["store-statement"] = (f.store.statements, None)
        out["store-commit"] = (f.store.commits, (f.store, False))
    return out


WHERE = [
    "main-statement",
    "main-commit",
    "main-commit-lost-answer",
    "store-statement",
    "store-commit",
]


def pick(f: Faults, where: str) -> Counter:
    counter, mode = targets(f)[where]
    f.main.after_commit = False
    if f.store is not None:
        f.store.after_commit = False
    if mode is not None:
        mode[0].after_commit = mode[1]
    return counter


def phone_for(prefix: int, where: str, n: int) -> str:
    """A mobile number of its own for each test (prefix), place of the fault and N."""
    digits = (n * 7919 + 123457) % 1_000_000  # one for each n, never a placeholder's zeros
    return f"+79{prefix}{WHERE.index(where)}{digits:06d}"


# the places tried by default: a failed commit rolls back as a failure of the commit's last
# statement does, which the statement sweeps end with (CDP_FAULTS_EXHAUSTIVE=1 tries them too)
DEFAULT_WHERE = ("main-statement", "main-commit-lost-answer", "store-statement")


async def every_where(faults: Faults, one: Any, only: tuple[str, ...] = DEFAULT_WHERE) -> None:
    """`one(where)` for each place a fault is injected (WHERE), on the same platform; `only`
    those unless CDP_FAULTS_EXHAUSTIVE=1."""
    for where in WHERE:
        if where.startswith("store") and faults.store is None:
            continue
        if where not in only and not EXHAUSTIVE:
            continue
        await one(where)


def assert_failed_cleanly(r: httpx.Response | BaseException, *secrets: str) -> None:
    """The caller was told it failed, in a problem body naming none of what it sent."""
    assert isinstance(r, httpx.Response), f"the request raised {r!r} instead of answering"
    assert r.status_code >= 400, f"{r.status_code} for a write that failed: {r.text}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    body = r.json()
    assert body["status"] == r.status_code and body["title"] and "detail" in body
    for s in secrets:
        assert s.lower() not in r.text.lower(), f"the error names {s!r}"


async def read_by_email(client, keys, email: str) -> dict | None:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- profiles


async def test_a_new_profile_failing_anywhere_is_an_error_and_sent_again_is_stored(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        counter = pick(faults, where)

        def record(n: int) -> dict:
            return {
                "source": "crm",
                "external_id": f"C-{where}-{n}",
                "email": f"new-{where}-{n}@example.com",
                "first_name": f"Name{n}",
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "email",
                        "status": "granted",
                        "source": "web",
                        "evidence": GRANT_EVIDENCE,
                    }
                ],
            }

        async def op(n: int) -> httpx.Response:
            return await client.post("/v1/profiles", json=record(n), headers=keys["ingest"])

        async def check(n: int, r: Any, fired: bool) -> None:
            email = f"new-{where}-{n}@example.com"
            if not fired:
                assert isinstance(r, httpx.Response) and r.status_code == 201, r
            else:
                assert_failed_cleanly(r, email, f"Name{n}")
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code in (200, 201), f"{where} n={n}: sent again: {again.text}"
            profile = await read_by_email(client, keys, email)
            assert profile is not None and profile["first_name"] == f"Name{n}"
            assert profile["profile_id"] == again.json()["profile_id"]
            members = await segment_members(client, keys, "marketing", "email")
            assert email in {m["address"] for m in members}, f"{where} n={n}: the grant was lost"
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, optional=where.startswith("store"))

    await every_where(faults, one)


async def two_profiles(client, keys, tag: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    ids = []
    for side in ("a", "b"):
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"{side}-{tag}@example.com", "first_name": side},
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["profile_id"])
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": f"ord-{tag}",
            "type": "purchase",
            "occurred_at": "2026-11-01T12:00:00Z",
            "email": f"b-{tag}@example.com",
            "amount": "10.00",
            "currency": "RUB",
            "category": "shoes",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return ids[0], ids[1]


async def create(client, keys, **record) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **record}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


def purchase(tag: str, **who: str) -> dict:
    return {
        "source": "shop",
        "event_id": f"ord-{tag}",
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "amount": "10.00",
        "currency": "RUB",
        "category": "shoes",
        **who,
    }


async def profile(client, keys, pid: str) -> dict:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_merge_failing_anywhere_is_an_error_and_sent_again_merges_once(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        counter = pick(faults, where)

        async def prepare(n: int) -> None:
            await create(client, keys, email=f"a-{where}-{n}@example.com", first_name="Old")
            await create(client, keys, phone=phone_for(16, where, n), first_name="Young")
            r = await client.post(
                "/v1/events",
                json=purchase(f"{where}-{n}", phone=phone_for(16, where, n)),
                headers=keys["ingest"],
            )
            assert r.status_code == 201, r.text

        def record(n: int) -> dict:
            return {
                "source": "crm",
                "email": f"a-{where}-{n}@example.com",
                "phone": phone_for(16, where, n),
            }

        async def op(n: int) -> httpx.Response:
            return await client.post("/v1/profiles", json=record(n), headers=keys["ingest"])

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert_failed_cleanly(r, f"a-{where}-{n}@example.com", phone_for(16, where, n)[2:])
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code == 200, f"{where} n={n}: {again.text}"
            one = await read_by_email(client, keys, f"a-{where}-{n}@example.com")
            assert one is not None
            r = await client.get(
                "/v1/profiles", params={"phone": phone_for(16, where, n)}, headers=keys["admin"]
            )
            assert r.json()["profile_id"] == one["profile_id"]
            assert one["stats"]["orders_count"] == 1, one["stats"]
            assert len(one["merged_from"]) == 1, one["merged_from"]
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one)


async def test_a_batch_failing_anywhere_is_an_error_and_sent_again_gives_every_result(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        counter = pick(faults, where)

        async def prepare(n: int) -> None:
            await create(client, keys, email=f"known-{where}-{n}@example.com")

        def records(n: int) -> list[dict]:
            return [
                {"source": "crm", "email": f"fresh-{where}-{n}@example.com", "first_name": "F"},
                {"source": "crm", "email": f"known-{where}-{n}@example.com", "first_name": "K"},
                {"source": "crm", "email": "not an address"},
                {
                    "source": "crm",
                    "external_id": f"E-{where}-{n}",
                    "email": f"fresh-{where}-{n}@example.com",
                },
            ]

        async def op(n: int) -> httpx.Response:
            return await client.post(
                "/v1/profiles/batch", json={"records": records(n)}, headers=keys["ingest"]
            )

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert isinstance(r, httpx.Response)
                if r.status_code == 200:  # each record stands alone: the failure is its own
                    errors = [x for x in r.json()["results"] if "error" in x]
                    assert len(errors) > 1, f"{where} n={n}: a failure answered as stored: {r.text}"
                    assert f"{where}-{n}@example.com" not in r.text
                else:
                    assert_failed_cleanly(r, f"{where}-{n}@example.com")
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code == 200, again.text
            results = again.json()["results"]
            assert [("error" in x) for x in results] == [False, False, True, False], results
            assert results[0]["profile_id"] == results[3]["profile_id"]
            fresh = await read_by_email(client, keys, f"fresh-{where}-{n}@example.com")
            assert fresh is not None and fresh["first_name"] == "F"
            kinds = sorted(i["kind"] for i in fresh["identities"])
            assert kinds == ["email", "external_id"], kinds
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one)


async def test_a_purchase_failing_anywhere_is_counted_once_when_sent_again(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        counter = pick(faults, where)

        async def prepare(n: int) -> None:
            if n % 2:  # every other one for a customer the platform knows, else a new one
                await create(client, keys, email=f"buyer-{where}-{n}@example.com")

        async def op(n: int) -> httpx.Response:
            body = purchase(f"{where}-{n}", email=f"buyer-{where}-{n}@example.com")
            return await client.post("/v1/events", json=body, headers=keys["ingest"])

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert_failed_cleanly(r, f"buyer-{where}-{n}@example.com")
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code in (200, 201), again.text
            twice = await op(n)
            assert twice.status_code == 200, twice.text
            buyer = await read_by_email(client, keys, f"buyer-{where}-{n}@example.com")
            assert buyer is not None
            assert buyer["stats"]["orders_count"] == 1, buyer["stats"]
            assert buyer["stats"]["total_spent"] in ("10.00", "10", "10.0"), buyer["stats"]
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one)


# --------------------------------------------------------------------------- erasure


async def erasable_customer(platform, client, keys, tag: str, phone: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A customer of two merged profiles, with a grant and a purchase; their erasure request."""
    email = f"erase-{tag}@example.com"
    await create(client, keys, email=email, first_name="Ерасмус")
    await create(client, keys, phone=phone, first_name="Ерасмус")
    survivor = await create(client, keys, email=email, phone=phone)
    r = await client.post(
        "/v1/consents",
        json={
            "email": email,
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "source": "web",
            "evidence": GRANT_EVIDENCE | {"ip": "203.0.113.7"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v1/events", json=purchase(tag, email=email), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    # submitted here, not by the API, whose answer runs the erasure at once
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=email)
    submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    return survivor, str(submitted.request_id)


async def test_an_erasure_failing_anywhere_is_completed_by_the_next_worker_pass(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        from consent.dsr.erasure import process
        from consent.dsr.worker import run_pending

        counter = pick(faults, where)
        made: dict[int, tuple[str, str]] = {}

        async def prepare(n: int) -> None:
            made[n] = await erasable_customer(
                platform, client, keys, f"{where}-{n}", phone_for(17, where, n)
            )

        async def op(n: int) -> str:
            return await process(platform, uuid.UUID(made[n][1]))

        async def check(n: int, outcome: Any, fired: bool) -> None:
            survivor, request_id = made[n]
            if fired:
                assert isinstance(outcome, BaseException), f"{where} n={n}: {outcome}"
            else:
                assert outcome == "completed"
            await assert_invariants(platform, client, keys, f"{where} n={n}", erased_done=False)
            await run_pending(platform)  # the worker's next pass
            r = await client.get(f"/v1/erasure-requests/{request_id}", headers=keys["compliance"])
            assert r.json()["status"] == "completed", f"{where} n={n}: {r.text}"
            r = await client.get(f"/v1/profiles/{survivor}", headers=keys["admin"])
            assert r.status_code == 410, r.text
            members = await segment_members(client, keys, "marketing", "email")
            assert f"erase-{where}-{n}@example.com" not in {m["address"] for m in members}
            await assert_invariants(platform, client, keys, f"{where} n={n} after the next pass")

        await sweep(counter, op, check, prepare)

    await every_where(faults, one)


# --------------------------------------------------------------------------- consent


def grant(**who: str) -> dict:
    return {
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "source": "web",
        "occurred_at": "2026-11-20T09:00:00Z",
        "evidence": GRANT_EVIDENCE | {"ip": "203.0.113.7"},
        **who,
    }


def emails_of(members: list[dict]) -> set[str]:
    return {m["address"] for m in members}


async def _consent_sweep(client, keys, platform, faults, status):
    async def one(where: str) -> None:
        counter = pick(faults, where)

        def email(n: int) -> str:
            return f"consent-{status}-{where}-{n}@example.com"

        async def prepare(n: int) -> None:
            await create(client, keys, email=email(n))
            if status == "withdrawn":
                r = await client.post(
                    "/v1/consents", json=grant(email=email(n)), headers=keys["ingest"]
                )
                assert r.status_code == 201, r.text

        def body(n: int) -> dict:
            if status == "granted":
                return grant(email=email(n)) | {"occurred_at": "2026-11-21T09:00:00Z"}
            return {
                "email": email(n),
                "purpose": "marketing",
                "channel": "email",
                "status": "withdrawn",
                "source": "web",
                "occurred_at": "2026-11-21T09:00:00Z",
            }

        async def op(n: int) -> httpx.Response:
            return await client.post("/v1/consents", json=body(n), headers=keys["ingest"])

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert_failed_cleanly(r, email(n), "203.0.113.7")
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code == 201, again.text
            members = emails_of(await segment_members(client, keys, "marketing", "email"))
            assert (email(n) in members) == (status == "granted"), f"{where} n={n}"
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one)


async def test_a_consent_failing_anywhere_is_all_or_nothing_and_sent_again_applies(
    client, keys, platform, faults
):
    for status in ("granted", "withdrawn"):
        await _consent_sweep(client, keys, platform, faults, status)


OPT_OUT_FORMS = ["email", "phone", "profile_id", "external_id", "unseen_email"]


async def _opt_out_sweep(client, keys, platform, faults, form):
    """Whatever the answer, a failed opt-out is in force for every address of the customer or
    for none; one answered 200 is in force; sent again it is in force."""

    async def one(where: str) -> None:
        counter = pick(faults, where)
        made: dict[int, str] = {}

        def email(n: int) -> str:
            return f"optout-{form}-{where}-{n}@example.com"

        def phone(n: int) -> str:
            return phone_for(30 + OPT_OUT_FORMS.index(form), where, n)

        async def prepare(n: int) -> None:
            if form == "unseen_email":
                return
            made[n] = await create(
                client, keys, email=email(n), phone=phone(n), external_id=f"OO-{where}-{n}"
            )
            for channel, who in (("email", {"email": email(n)}), ("sms", {"phone": phone(n)})):
                r = await client.post(
                    "/v1/consents", json=grant(channel=channel, **who), headers=keys["ingest"]
                )
                assert r.status_code == 201, r.text

        def body(n: int) -> dict:
            who: dict[str, str] = {
                "email": {"email": email(n)},
                "unseen_email": {"email": email(n)},
                "phone": {"phone": phone(n)},
                "profile_id": {"profile_id": made.get(n, "")},
                "external_id": {"external_id": f"OO-{where}-{n}", "id_source": "crm"},
            }[form]
            return {"source": "esp", **who}

        async def op(n: int) -> httpx.Response:
            return await client.post("/v1/opt-outs", json=body(n), headers=keys["ingest"])

        async def in_force(n: int) -> tuple[bool, bool]:
            em = email(n) in emails_of(await segment_members(client, keys, "marketing", "email"))
            sms = phone(n) in {
                m["address"] for m in await segment_members(client, keys, "marketing", "sms")
            }
            return not em, not sms

        async def check(n: int, r: Any, fired: bool) -> None:
            if form == "unseen_email":  # then she arrives with an older grant
                await create(client, keys, email=email(n))
                await client.post(
                    "/v1/consents", json=grant(email=email(n)), headers=keys["ingest"]
                )
            state = await in_force(n)
            if fired:
                assert_failed_cleanly(r, email(n), phone(n)[4:], f"OO-{where}-{n}")
                if form != "unseen_email":
                    assert state[0] == state[1], f"{where} n={n}: half an opt-out: {state}"
            else:
                assert r.status_code == 200, r.text
                assert state == (True, True) or (form == "unseen_email" and state[0]), state
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            assert again.status_code == 200, f"{where} n={n}: {again.text}"
            state = await in_force(n)
            assert state[0] and (form == "unseen_email" or state[1]), f"{where} n={n}: {state}"
            await assert_invariants(platform, client, keys, f"{where} n={n} sent again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    # every place for an email; the statements alone for the other forms (all: exhaustive)
    await every_where(faults, one, DEFAULT_WHERE if form == "email" else ("main-statement",))


async def test_an_opt_out_failing_anywhere_is_in_force_wholly_or_not_at_all(
    client, keys, platform, faults
):
    for form in OPT_OUT_FORMS:
        await _opt_out_sweep(client, keys, platform, faults, form)


# --------------------------------------------------------------------------- unmerge


async def test_an_unmerge_failing_anywhere_leaves_the_merge_whole_or_undone(
    client, keys, platform, faults
):
    async def one(where: str) -> None:
        counter = pick(faults, where)
        made: dict[int, str] = {}

        def email(n: int) -> str:
            return f"unmerge-{where}-{n}@example.com"

        def phone(n: int) -> str:
            return phone_for(26, where, n)

        async def prepare(n: int) -> None:
            await create(client, keys, email=email(n), first_name="Ann")
            await create(client, keys, phone=phone(n), first_name="Bob")
            r = await client.post(
                "/v1/events",
                json=purchase(f"u-{where}-{n}", phone=phone(n)),
                headers=keys["ingest"],
            )
            assert r.status_code == 201, r.text
            r = await client.post(
                "/v1/consents", json=grant(email=email(n)), headers=keys["ingest"]
            )
            assert r.status_code == 201, r.text
            made[n] = await create(client, keys, email=email(n), phone=phone(n))

        async def op(n: int) -> httpx.Response:
            return await client.post(f"/v1/profiles/{made[n]}/unmerge", headers=keys["admin"])

        async def split(n: int) -> bool:
            by_email = await read_by_email(client, keys, email(n))
            r = await client.get("/v1/profiles", params={"phone": phone(n)}, headers=keys["admin"])
            assert by_email is not None and r.status_code == 200, r.text
            return by_email["profile_id"] != r.json()["profile_id"]

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert_failed_cleanly(r, email(n))
            else:
                assert r.status_code == 200, r.text
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            if not await split(n):
                again = await op(n)
                assert again.status_code == 200, f"{where} n={n}: {again.text}"
            assert await split(n)
            ann = await read_by_email(client, keys, email(n))
            assert ann is not None and ann["stats"]["orders_count"] == 0, ann
            assert email(n) in emails_of(await segment_members(client, keys, "marketing", "email"))
            await assert_invariants(platform, client, keys, f"{where} n={n} after")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one)


# --------------------------------------------------------------------------- crypto


async def test_encryption_failing_at_any_call_stores_nothing_and_sent_again_is_stored(
    client, keys, platform
):
    """An exception from the cipher (a bug, a broken library): the record is an error and
    nothing of it is stored; for a new profile, a merge and a consent with evidence."""
    counter = Counter()

    async def prepare(n: int) -> None:
        await create(client, keys, phone=f"+7927{n:07d}", first_name="Old")

    def record(n: int) -> dict:
        return {
            "source": "crm",
            "email": f"cipher-{n}@example.com",
            "phone": f"+7927{n:07d}",
            "first_name": "Анна",
            "postal_address": "ул. Ленина, 5",
            "consents": [grant() | {"channel": "email"}],
        }

    async def op(n: int) -> httpx.Response:
        return await client.post("/v1/profiles", json=record(n), headers=keys["ingest"])

    async def check(n: int, r: Any, fired: bool) -> None:
        if fired:
            assert_failed_cleanly(r, f"cipher-{n}@example.com", "Ленина")
            assert await read_by_email(client, keys, f"cipher-{n}@example.com") is None
        await assert_invariants(platform, client, keys, f"crypto n={n}")
        again = await op(n)
        assert again.status_code == 200, again.text
        one = await read_by_email(client, keys, f"cipher-{n}@example.com")
        assert one is not None and one["postal_address"] == "ул. Ленина, 5"
        assert one["consents"]["contactable"]["marketing"]["email"] is True
        await assert_invariants(platform, client, keys, f"crypto n={n} sent again")

    with failing_call(FieldCipher, "encrypt", counter):
        await sweep(counter, op, check, prepare)


# --------------------------------------------------------------------------- cdp import

IMPORT_HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "consent.marketing.email",
    "consent.marketing.email.wording_id",
    "consent.marketing.sms",
]


def import_file(tmp_path, tag: str):  # type: ignore[no-untyped-def]
    import csv

    path = tmp_path / f"import-{tag}.csv"
    rows = [
        [f"I1-{tag}", f"imp1-{tag}@example.com", "", "Анна", "granted", "nl-v3", ""],
        [f"I2-{tag}", "not an address", "", "Bob", "", "", ""],
        [f"I3-{tag}", f"imp1-{tag}@example.com", "", "", "", "", ""],
        [f"I4-{tag}", f"imp4-{tag}@example.com", "", "Иван", "", "", "granted"],
        [f"I5-{tag}", "", "", "Eve", "", "", ""],
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(IMPORT_HEADER)
        w.writerows(rows)
    return path


def rejects_of(path) -> list[list[str]]:  # type: ignore[no-untyped-def]
    import csv

    return sorted(csv.reader(path.read_text(encoding="utf-8").splitlines()[1:]))


async def test_an_import_failing_anywhere_says_what_is_stored_and_run_again_completes(
    client, keys, platform, faults, tmp_path
):
    async def one(where: str) -> None:
        import re

        from cdp.importer import ImportStopped, run_import

        counter = pick(faults, where)
        clean: dict[str, Any] = {}

        async def op(n: int) -> Any:
            return await run_import(
                platform, import_file(tmp_path, f"{where}-{n}"), "crm", workers=0
            )

        async def stored(tag: str) -> list[bool]:
            out = []
            for i in (1, 3, 4, 5):
                r = await client.get(
                    "/v1/profiles",
                    params={"source": "crm", "external_id": f"I{i}-{tag}"},
                    headers=keys["admin"],
                )
                out.append(r.status_code == 200)
            return out

        async def check(n: int, outcome: Any, fired: bool) -> None:
            tag = f"{where}-{n}"
            if not fired:
                assert not isinstance(outcome, BaseException), outcome
                clean["summary"] = outcome
                clean["rejects"] = rejects_of(outcome.rejects_path)
            else:
                assert isinstance(outcome, ImportStopped), f"{where} n={n}: {outcome!r}"
                message = outcome.detail
                assert "imp1-" not in message and "Анна" not in message, message
                upto = re.search(r"the rows up to line (\d+) are stored", message)
                through = int(upto.group(1)) if upto else 0
                lines = [2, 4, 5, 6]
                have = await stored(tag)
                said = [line <= through for line in lines]
                if not where.endswith("lost-answer"):
                    assert have == said, f"{where} n={n}: stored {have}, said {message}"
                else:  # committed, though the answer was lost: stored, or said so
                    assert all(h or not s for h, s in zip(have, said, strict=True)), message
            await assert_invariants(platform, client, keys, f"{where} n={n}")
            again = await op(n)
            base = clean["summary"]
            assert (again.rows, again.rejected_rows, again.consents_rejected) == (
                base.rows,
                base.rejected_rows,
                base.consents_rejected,
            ), again
            assert again.created + again.joined == base.created + base.joined
            assert rejects_of(again.rejects_path) == clean["rejects"]
            assert await stored(tag) == [True] * 4
            members = emails_of(await segment_members(client, keys, "marketing", "email"))
            assert f"imp1-{tag}@example.com" in members
            await assert_invariants(platform, client, keys, f"{where} n={n} run again")

        await sweep(counter, op, check, optional=where.startswith("store"))

    await every_where(faults, one)


# --------------------------------------------------------------------------- cdp keys rotate-master


class AnyEngineStatements:
    """Statements of every engine (the CLI opens its own), failing at the armed one."""

    def __init__(self, counter: Counter) -> None:
        from sqlalchemy.engine import Engine

        self.counter, self.target = counter, Engine

    def _on(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if self.counter.hit(" ".join(statement.split()[:3])):
            from sqlalchemy.exc import OperationalError

            # as the driver's error reaches the code: "disk I/O error", "connection lost"
            raise OperationalError(statement, None, InjectedFault("disk I/O error"))

    def __enter__(self) -> AnyEngineStatements:
        from sqlalchemy import event

        event.listen(self.target, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.target, "before_cursor_execute", self._on)


async def test_a_master_key_rotation_failing_at_any_statement_says_so_and_run_again_finishes(
    client, keys, platform, backend, tmp_path
):
    """`cdp keys rotate-master` stopped by a database error: exit status 1 with one line that
    says what failed (no traceback), every customer still readable under the old key; run
    again, it finishes and every customer reads under the new one."""
    import asyncio

    from click.testing import CliRunner

    from cdp.cli import main
    from cdp.crypto.master import MasterKey
    from cdp.platform import open_platform
    from tests.conftest import make_settings

    if backend != "sqlite":
        return  # the same code on both; the CLI opens its own engine, slow on PostgreSQL
    for who, name in (("anna", "Анна"), ("boris", "Борис")):
        await create(client, keys, email=f"rot-{who}@example.com", first_name=name)
    current = {"key": platform.settings.master_key or ""}
    counter = Counter()

    def invoke(new: str) -> Any:
        env = {
            "CDP_DATABASE_URL": platform.settings.database_url,
            "CDP_MASTER_KEY": current["key"],
            "CDP_NEW_MASTER_KEY": new,
            "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
        }
        return CliRunner().invoke(main, ["keys", "rotate-master"], env=env)

    async def readable(master: str) -> list[str]:
        opened = await open_platform(
            make_settings(platform.settings.database_url, tmp_path, master_key=master),
            run_migrations=False,
        )
        try:
            from api.app import create_app

            app = create_app(platform=opened)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                names = []
                for who in ("anna", "boris"):
                    r = await c.get(
                        "/v1/profiles",
                        params={"email": f"rot-{who}@example.com"},
                        headers=keys["admin"],
                    )
                    assert r.status_code == 200, r.text
                    names.append(r.json()["first_name"])
                return names
        finally:
            await opened.close()

    async def op(n: int) -> Any:
        new = MasterKey.generate_base64()
        with AnyEngineStatements(counter):
            result = await asyncio.to_thread(invoke, new)
        return new, result

    async def check(n: int, outcome: Any, fired: bool) -> None:
        new, result = outcome
        if not fired:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, f"n={n}: a failed rotation exited 0: {result.output}"
            assert "Traceback" not in result.output, result.output
            assert isinstance(result.exception, SystemExit), f"n={n}: {result.exception!r}"
            assert await readable(current["key"]) == ["Анна", "Борис"]
            again = await asyncio.to_thread(invoke, new)
            assert again.exit_code == 0, again.output
        current["key"] = new
        assert await readable(new) == ["Анна", "Борис"]

    await sweep(counter, op, check)


# --------------------------------------------------------------------------- retried writes


WRITES = ("new", "merge", "opt-out", "batch")


async def _deadlock_sweep(client, keys, platform, faults, write):
    """Profile writes and opt-outs run a transaction that lost a deadlock again
    (cdp.db.conflicts): whichever statement lost it, the caller gets the answer of a write
    that went through, and the write is made once."""
    from tests.faults import InjectedDeadlock

    counter = faults.main.statements
    faults.main.fault = InjectedDeadlock

    def email(n: int) -> str:
        return f"dl-{write}-{n}@example.com"

    async def prepare(n: int) -> None:
        if write in ("merge", "opt-out"):
            await create(client, keys, email=email(n))
            await create(
                client,
                keys,
                phone=f"+7928{WRITES.index(write)}{(n * 7919 + 123457) % 1_000_000:06d}",
            )
            await client.post("/v1/consents", json=grant(email=email(n)), headers=keys["ingest"])

    async def op(n: int) -> httpx.Response:
        if write == "opt-out":
            body = {"email": email(n), "source": "esp"}
            return await client.post("/v1/opt-outs", json=body, headers=keys["ingest"])
        record = {"source": "crm", "email": email(n), "first_name": "D"}
        if write == "merge":
            record["phone"] = f"+7928{WRITES.index(write)}{(n * 7919 + 123457) % 1_000_000:06d}"
        if write == "batch":
            return await client.post(
                "/v1/profiles/batch", json={"records": [record]}, headers=keys["ingest"]
            )
        return await client.post("/v1/profiles", json=record, headers=keys["ingest"])

    async def check(n: int, r: Any, fired: bool) -> None:
        assert isinstance(r, httpx.Response), r
        if write == "batch" and r.status_code == 503:  # not group-committed: "send it again"
            assert r.headers["retry-after"] and email(n) not in r.text, r.text
            assert await read_by_email(client, keys, email(n)) is None
            r = await op(n)
        assert r.status_code in (200, 201), f"n={n}: {r.text}"
        if write == "batch":
            assert "error" not in r.json()["results"][0], r.text
        members = emails_of(await segment_members(client, keys, "marketing", "email"))
        assert (email(n) in members) == (write not in ("opt-out", "new", "batch"))
        one = await read_by_email(client, keys, email(n))
        assert one is not None
        await assert_invariants(platform, client, keys, f"{write} n={n}")

    await sweep(counter, op, check, prepare)


async def test_a_deadlock_at_any_statement_of_a_group_committed_write_is_run_again_unseen(
    client, keys, platform, faults
):
    for write in WRITES:
        await _deadlock_sweep(client, keys, platform, faults, write)


async def test_writes_arriving_together_failing_anywhere_each_answer_true(
    client, keys, platform, faults
):
    """Records and opt-outs sharing group commits, one statement failing: every answer tells
    the truth about its own write, and each sent again is made."""
    import asyncio

    counter = faults.main.statements

    def email(n: int, i: int) -> str:
        return f"together-{n}-{i}@example.com"

    async def prepare(n: int) -> None:
        for i in (3, 4):
            await create(client, keys, email=email(n, i))
            await client.post("/v1/consents", json=grant(email=email(n, i)), headers=keys["ingest"])

    def requests(n: int) -> list[tuple[str, dict]]:
        return [
            ("/v1/profiles", {"source": "crm", "email": email(n, i), "first_name": f"T{i}"})
            for i in (0, 1, 2)
        ] + [("/v1/opt-outs", {"email": email(n, i), "source": "esp"}) for i in (3, 4)]

    async def op(n: int) -> list[Any]:
        return await asyncio.gather(
            *(client.post(url, json=body, headers=keys["ingest"]) for url, body in requests(n)),
            return_exceptions=True,
        )

    async def check(n: int, answers: Any, fired: bool) -> None:
        assert isinstance(answers, list), answers
        members = emails_of(await segment_members(client, keys, "marketing", "email"))
        for (url, body), r in zip(requests(n), answers, strict=True):
            assert isinstance(r, httpx.Response), r
            if r.status_code >= 400:
                assert_failed_cleanly(r, body["email"])
            if url == "/v1/opt-outs" and r.status_code == 200:
                assert body["email"] not in members, f"n={n}: an opt-out answered 200 not in force"
            if url == "/v1/profiles" and r.status_code in (200, 201):
                assert await read_by_email(client, keys, body["email"]) is not None
        await assert_invariants(platform, client, keys, f"together n={n}")
        for url, body in requests(n):
            r = await client.post(url, json=body, headers=keys["ingest"])
            assert r.status_code in (200, 201), r.text
        members = emails_of(await segment_members(client, keys, "marketing", "email"))
        assert not {email(n, 3), email(n, 4)} & members
        await assert_invariants(platform, client, keys, f"together n={n} sent again")

    await sweep(counter, op, check, prepare)


# --------------------------------------------------------------------------- webhooks


async def test_a_webhook_dispatch_failing_at_any_statement_still_delivers_every_event(
    client, keys, platform, faults, receiver
):
    """The dispatcher stopped by a database error (fanning out, claiming, recording): the next
    run delivers every event, at least once and always under its own id, and leaves nothing
    pending."""
    import dataclasses

    from consent.outbox.config import DispatchConfig
    from consent.outbox.dispatcher import open_dispatcher, outstanding

    cfg = DispatchConfig(
        retry_base=0.001, retry_cap=0.005, poll_interval=0.01, min_interval=0.001, timeout=5.0
    )
    cfg = dataclasses.replace(cfg, lease=0.3)  # a send the failed run left leased: soon again
    r = await client.post(
        "/v1/webhooks", json={"url": receiver.url, "kinds": ["opt_out"]}, headers=keys["admin"]
    )
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    counter = faults.main.statements
    expected: set[str] = set()

    async def prepare(n: int) -> None:
        await create(client, keys, email=f"hook-{n}@example.com")
        for who in ({"email": f"hook-{n}@example.com"}, {"email": f"unseen-hook-{n}@example.com"}):
            r = await client.post(
                "/v1/opt-outs", json={"source": "esp", **who}, headers=keys["ingest"]
            )
            assert r.status_code == 200, r.text

    async def op(n: int) -> None:
        async with open_dispatcher(platform, cfg) as dispatcher:
            try:
                await dispatcher.drain(settle=True, max_seconds=30)
            finally:  # sends already under way end (`cdp dispatch --once` leaves them leased)
                await dispatcher.finish()

    async def check(n: int, outcome: Any, fired: bool) -> None:
        if not fired:
            assert outcome is None, outcome
        else:
            import asyncio

            await asyncio.sleep(cfg.lease)
            await op(n)  # the next run
        assert await outstanding(platform) == 0
        async with platform.db.read() as conn:
            from sqlalchemy import select

            from consent.outbox.tables import outbox_events

            ids = {
                str(i)
                for (i,) in await conn.execute(
                    select(outbox_events.c.id).where(outbox_events.c.kind == "opt_out")
                )
            }
        got = {req.payload["event_id"] for req in receiver.requests if req.valid}
        expected.update(ids)
        assert expected <= got, f"n={n}: never delivered: {expected - got}"
        assert all(req.valid for req in receiver.requests)
        await assert_invariants(platform, client, keys, f"webhooks n={n}")

    await sweep(counter, op, check, prepare)


@pytest.mark.parametrize("entry", ["one-click", "sms-stop"])
async def test_an_unsubscribe_link_or_sms_stop_failing_anywhere_is_all_or_nothing(
    client, keys, platform, faults, entry
):
    """The public one-click unsubscribe and an inbound STOP: an error leaves the address
    contactable or not, never half; an answer of 200 is in force; sent again, in force."""
    channel = "email" if entry == "one-click" else "sms"

    async def one(where: str) -> None:
        counter = pick(faults, where)
        tokens: dict[int, str] = {}

        def address(n: int) -> str:
            if channel == "email":
                return f"{entry}-{where}-{n}@example.com"
            return phone_for(40, where, n)

        async def prepare(n: int) -> None:
            who = {channel if channel == "email" else "phone": address(n)}
            await create(client, keys, **who)
            r = await client.post(
                "/v1/consents", json=grant(channel=channel, **who), headers=keys["ingest"]
            )
            assert r.status_code == 201, r.text
            members = await segment_members(client, keys, "marketing", channel)
            tokens[n] = next(m for m in members if m["address"] == address(n))["unsubscribe_token"]

        async def op(n: int) -> httpx.Response:
            if entry == "one-click":
                return await client.post(f"/v1/unsubscribe/{tokens[n]}")
            body = {"from": address(n), "text": "STOP"}
            return await client.post("/v1/inbound/sms", json=body, headers=keys["ingest"])

        async def contactable(n: int) -> bool:
            members = await segment_members(client, keys, "marketing", channel)
            return address(n) in {m["address"] for m in members}

        async def check(n: int, r: Any, fired: bool) -> None:
            if fired:
                assert_failed_cleanly(r, address(n), tokens[n])
            else:
                assert r.status_code == 200, r.text
                assert not await contactable(n)
            await assert_invariants(platform, client, keys, f"{entry} {where} n={n}")
            again = await op(n)
            assert again.status_code == 200, again.text
            assert not await contactable(n), f"{entry} {where} n={n}"
            await assert_invariants(platform, client, keys, f"{entry} {where} n={n} again")

        await sweep(counter, op, check, prepare, optional=where.startswith("store"))

    await every_where(faults, one, ("main-statement", "main-commit-lost-answer"))
