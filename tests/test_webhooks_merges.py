"""Merges and unmerges announce themselves to the subscriptions that ask for them.

A sending tool that keys its list by profile id must hear that profile B is now profile A (or
is its own again), whichever path merged them: a record on ingest, a bulk `cdp import`, an
accepted match suggestion; and `POST /v1/profiles/{id}/unmerge`. Ids only, never an address.
"""

from __future__ import annotations

from sqlalchemy import select

from cdp.importer import run_import
from cdp.matching.suggestions import run_matching
from consent.outbox.tables import outbox_events
from tests.test_matching import CYRILLIC, LATIN
from tests.test_webhooks_delivery import PAYLOAD_KEYS, add_profile, drain, subscribe

MERGE_KEYS = PAYLOAD_KEYS | {"survivor_profile_id", "absorbed_profile_id"}


def merge_events(receiver) -> list[dict]:  # type: ignore[no-untyped-def]
    assert all(r.valid for r in receiver.requests)
    return [r.payload for r in receiver.accepted]


async def test_a_merge_on_ingest_is_announced_with_ids_only(client, keys, platform, receiver):
    a = await add_profile(client, keys, email="merge.a@example.com")
    b = await add_profile(client, keys, phone="+79165550001")
    await subscribe(
        client, keys, receiver, kinds=["profile.merged", "opt_out"], include_address=True
    )
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "merge.a@example.com", "phone": "+79165550001"},
        headers=keys["ingest"],
    )
    assert r.json()["merged_profile_ids"] == [b]
    await drain(platform)
    (body,) = merge_events(receiver)
    assert set(body) == MERGE_KEYS
    assert body["kind"] == "profile.merged"
    assert (body["survivor_profile_id"], body["absorbed_profile_id"]) == (a, b)
    assert body["profile_id"] == a
    assert (body["address_kind"], body["address_blind_index"]) == (None, None)
    assert body["source"] == "deterministic"
    raw = receiver.requests[0].body
    assert b"merge.a" not in raw and b"5550001" not in raw  # no address, even if allowed


async def test_a_bulk_import_merge_is_announced(client, keys, platform, receiver, tmp_path):
    a = await add_profile(client, keys, email="bulk.a@example.com")
    b = await add_profile(client, keys, phone="+79165550002")
    await subscribe(client, keys, receiver, kinds=["profile.merged"])
    src = tmp_path / "crm.csv"
    src.write_text("email,phone\nbulk.a@example.com,+79165550002\n", "utf-8")
    summary = await run_import(platform, src, "crm", workers=0)
    assert summary.merged == 1
    await drain(platform)
    (body,) = merge_events(receiver)
    assert (body["kind"], body["survivor_profile_id"], body["absorbed_profile_id"]) == (
        "profile.merged",
        a,
        b,
    )


async def test_an_accepted_suggestion_and_its_unmerge_are_announced(
    client, keys, platform, receiver
):
    anna = await add_profile(client, keys, **{k: v for k, v in CYRILLIC.items() if k != "source"})
    latin = await add_profile(client, keys, **{k: v for k, v in LATIN.items() if k != "source"})
    await subscribe(client, keys, receiver, kinds=["profile.merged", "profile.unmerged"])
    await run_matching(platform)
    r = await client.get("/v1/match-suggestions?status=open", headers=keys["admin"])
    (s,) = r.json()["items"]
    accepted = await client.post(
        f"/v1/match-suggestions/{s['suggestion_id']}/accept", headers=keys["admin"]
    )
    assert accepted.status_code == 200, accepted.text
    undone = await client.post(f"/v1/profiles/{latin}/unmerge", headers=keys["admin"])
    assert undone.status_code == 200, undone.text
    await drain(platform)
    merged, unmerged = merge_events(receiver)
    assert (merged["kind"], merged["source"]) == ("profile.merged", "reviewed")
    assert (merged["survivor_profile_id"], merged["absorbed_profile_id"]) == (anna, latin)
    assert set(unmerged) == MERGE_KEYS
    assert (unmerged["kind"], unmerged["source"]) == ("profile.unmerged", "unmerge")
    assert (unmerged["survivor_profile_id"], unmerged["absorbed_profile_id"]) == (anna, latin)
    assert unmerged["profile_id"] == anna


async def test_subscriptions_to_the_default_kinds_do_not_start_getting_merges(
    client, keys, platform, receiver
):
    """A receiver written before merges were announced may refuse a kind it does not know, and
    a refused delivery holds back that customer's later events until it is dead: the default
    kinds stay the consent changes; merges are asked for by name."""
    sub = await subscribe(client, keys, receiver)
    assert "profile.merged" not in sub["kinds"] and "opt_out" in sub["kinds"]
    await add_profile(client, keys, email="quiet.a@example.com")
    await add_profile(client, keys, phone="+79165550003")
    await add_profile(client, keys, email="quiet.a@example.com", phone="+79165550003")
    async with platform.db.read() as conn:
        kinds = (await conn.execute(select(outbox_events.c.kind))).scalars().all()
    assert kinds == ["profile.merged"]  # written, for whoever asks for it
    await drain(platform)
    assert receiver.requests == []


PUSH_GRANT = {
    "purpose": "marketing",
    "channel": "push",
    "status": "granted",
    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
}


async def withdraw_push(client, keys, profile_id: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/consents",
        json={
            "profile_id": profile_id,
            "purpose": "marketing",
            "channel": "push",
            "status": "withdrawn",
            "source": "app",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text


async def push_allowed(client, keys, profile_id: str) -> bool:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{profile_id}/consents", headers=keys["admin"])
    return r.json()["contactable"]["marketing"]["push"]


def consent_events(receiver) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [
        (b["kind"], b["profile_id"], b["address_kind"], b["purpose"], b["channel"], b["source"])
        for b in merge_events(receiver)
    ]


async def test_a_merge_that_stops_the_survivors_push_announces_the_withdrawal(
    client, keys, platform, receiver
):
    """A's app may send pushes (granted); B turned them off. Merged, the most restrictive state
    wins: A's pushes stop. A sending tool on the default kinds, which never hears of merges,
    heard nothing and went on pushing to A."""
    a = await add_profile(client, keys, email="push.a@example.com", consents=[PUSH_GRANT])
    b = await add_profile(client, keys, phone="+79165550011")
    await withdraw_push(client, keys, b)
    assert await push_allowed(client, keys, a)
    await subscribe(client, keys, receiver)  # the default kinds: consent changes only
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "push.a@example.com", "phone": "+79165550011"},
        headers=keys["ingest"],
    )
    assert r.json()["merged_profile_ids"] == [b]
    assert not await push_allowed(client, keys, a)
    await drain(platform)
    assert consent_events(receiver) == [
        ("consent.withdrawn", a, "profile", "marketing", "push", "app")
    ]


async def test_a_merge_that_stops_nothing_announces_no_consent_change(
    client, keys, platform, receiver
):
    a = await add_profile(client, keys, email="push.c@example.com")
    await withdraw_push(client, keys, a)
    b = await add_profile(client, keys, phone="+79165550013", consents=[PUSH_GRANT])
    await subscribe(client, keys, receiver)
    await add_profile(client, keys, email="push.c@example.com", phone="+79165550013")
    await drain(platform)
    assert consent_events(receiver) == []  # A stays withdrawn; B is A now (profile.merged)
    assert b


async def test_an_unmerge_announces_the_withdrawals_the_split_off_customer_keeps(
    client, keys, platform, receiver
):
    """B allowed pushes, then was merged into A, and the merged customer turned pushes off: the
    withdrawal binds both halves, so after the unmerge B's pushes stay off. A tool that keys
    pushes by profile had heard B granted, and A (not B) withdrawn: it pushed to B again."""
    a = await add_profile(client, keys, email="push.e@example.com")
    b = await add_profile(client, keys, phone="+79165550015", consents=[PUSH_GRANT])
    await add_profile(client, keys, email="push.e@example.com", phone="+79165550015")
    await withdraw_push(client, keys, a)
    await subscribe(client, keys, receiver, kinds=["consent.withdrawn", "profile.unmerged"])
    r = await client.post(f"/v1/profiles/{b}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert not await push_allowed(client, keys, b)
    await drain(platform)
    # in this order: B is B again, then what holds for B
    assert consent_events(receiver) == [
        ("profile.unmerged", a, None, None, None, "unmerge"),
        ("consent.withdrawn", b, "profile", "marketing", "push", "app"),
    ]
