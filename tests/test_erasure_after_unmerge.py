"""A customer merged into another by mistake, unmerged, then erased (found by review on
2026-12-06). While merged, what was recorded for her (consent evidence, an order naming her
profile id, merge snapshots of later merges, every backup taken meanwhile) was under the
survivor's data key. The unmerge gives her data back under her own key and the survivor (the
holder) a new key (cdp.profiles.rekey); the holder's old key's share stays in the key store
until she (or the holder) is erased, and is destroyed then."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from cdp.db.tables import key_share_owners, profile_keys
from cdp.ids import utcnow
from cdp.key_store import share_id
from cdp.platform import open_platform
from cdp.profiles.merge import SurvivorState
from cdp.profiles.unmerge import rebased
from consent.tables import consent_ledger
from tests.test_key_store import row_of, take_backup

A_EMAIL, A_PHONE = "anna.f@example.com", "+79161230055"
B_EMAIL, C_PHONE = "boris.f@example.com", "+79160000055"
EVIDENCE = {
    "wording_id": "w",
    "method": "double_opt_in",
    "ip": "198.51.100.23",
    "user_agent": "AnnaUA/3.0",
}
BORIS_EVIDENCE = {
    "wording_id": "w",
    "method": "double_opt_in",
    "ip": "203.0.113.77",
    "user_agent": "BorisUA/1.0",
}
HERS = ("198.51.100.23", "AnnaUA/3.0", A_EMAIL, A_PHONE, "for Анна", "Анна")


async def post(client, keys, path, body, role="ingest"):  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys[role])
    assert r.status_code in (200, 201, 202), r.text
    return r.json()


async def wrong_merge_undone(  # type: ignore[no-untyped-def]
    client, keys, *, carl: bool = False, while_merged=None
):
    """Boris, with a grant and an order of his own; Anna merged into him by a wrong record,
    granting and ordering (by her profile id) while merged; then the merge undone."""
    crm = {"source": "crm"}
    boris = (await post(client, keys, "/v1/profiles", {**crm, "email": B_EMAIL}))["profile_id"]
    grant = {"purpose": "marketing", "channel": "email", "status": "granted", "source": "web"}
    await post(
        client, keys, "/v1/consents", {**grant, "email": B_EMAIL, "evidence": BORIS_EVIDENCE}
    )
    await post(client, keys, "/v1/events", order("o-boris", B_EMAIL, {"note": "Boris's order"}))
    anna = (
        await post(
            client,
            keys,
            "/v1/profiles",
            {**crm, "email": A_EMAIL, "phone": A_PHONE, "first_name": "Анна"},
        )
    )["profile_id"]
    # a record links Anna's phone to Boris's email: Anna is merged into Boris
    await post(
        client, keys, "/v1/profiles", {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    )
    # while merged: Anna grants on her own email; a shop sends an order naming her profile id
    await post(client, keys, "/v1/consents", {**grant, "email": A_EMAIL, "evidence": EVIDENCE})
    by_id = order(f"o-{A_EMAIL}", None, {"gift": "for Анна"})
    await post(client, keys, "/v1/events", {**by_id, "profile_id": anna})
    carl_id = None
    if carl:  # a third customer joins Boris while Anna is merged in
        carl_id = (
            await post(
                client, keys, "/v1/profiles", {**crm, "phone": C_PHONE, "first_name": "Карл"}
            )
        )["profile_id"]
        await post(
            client, keys, "/v1/profiles", {"source": "wrong2", "email": B_EMAIL, "phone": C_PHONE}
        )
    if while_merged is not None:
        await while_merged(boris, anna)
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return uuid.UUID(boris), uuid.UUID(anna), carl_id


def order(event_id: str, email: str | None, properties: dict) -> dict:
    body = {
        "source": "shop",
        "event_id": event_id,
        "type": "purchase",
        "occurred_at": (utcnow() - timedelta(hours=1)).isoformat(),
        "amount": "10.00",
        "currency": "RUB",
        "properties": properties,
    }
    return {**body, "email": email} if email else body


async def erase(client, keys, email: str) -> None:  # type: ignore[no-untyped-def]
    await post(
        client,
        keys,
        "/v1/erasure-requests",
        {"email": email, "requested_by": "customer"},
        role="compliance",
    )


async def access_export(client, keys, email: str) -> str:  # type: ignore[no-untyped-def]
    return str(await post(client, keys, "/v1/access-requests", {"email": email}, "compliance"))


async def shares_held(platform, *ids: uuid.UUID) -> set[uuid.UUID]:  # type: ignore[no-untyped-def]
    return set(await platform.keys.store.get(ids))


async def test_her_evidence_and_order_are_not_in_another_customers_access_export(
    client, keys, platform
):
    _, anna, _ = await wrong_merge_undone(client, keys)
    await erase(client, keys, A_EMAIL)
    assert (await client.get(f"/v1/profiles/{anna}", headers=keys["admin"])).status_code == 410
    text = await access_export(client, keys, B_EMAIL)
    assert [s for s in HERS if s in text] == []
    # what is Boris's own is all there, read under his new key
    assert all(s in text for s in ("203.0.113.77", "BorisUA/1.0", "Boris's order", B_EMAIL))


async def test_undoing_a_later_merge_does_not_give_her_name_back(client, keys, platform):
    boris, _, carl = await wrong_merge_undone(client, keys, carl=True)
    await erase(client, keys, A_EMAIL)
    r = await client.post(f"/v1/profiles/{carl}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = (await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])).json()
    assert body["first_name"] is None  # neither Carl's name nor hers: Boris never gave one
    carl_body = (await client.get(f"/v1/profiles/{carl}", headers=keys["admin"])).json()
    assert carl_body["first_name"] == "Карл"


async def test_the_unmerge_gives_each_their_own_under_their_own_key(client, keys, platform):
    """Before any erasure: Boris reads as before under a new key, in every process (another
    one holding his old key in its cache too), in his access export and in a segment; Anna's
    grant and order are hers."""
    other = await open_platform(platform.settings, run_migrations=False)
    try:

        async def cache_his_key(boris: str, anna: str) -> None:
            async with other.db.read() as conn:
                assert uuid.UUID(boris) in await other.keys.ciphers(conn, [uuid.UUID(boris)])

        boris, _, _ = await wrong_merge_undone(client, keys, while_merged=cache_his_key)
        async with platform.db.read() as conn:
            (key_id,) = (
                await conn.execute(
                    select(profile_keys.c.key_id).where(profile_keys.c.profile_id == boris)
                )
            ).one()
            for p in (platform, other):
                cipher = (await p.keys.ciphers(conn, [boris]))[boris]
                assert cipher.key_id == key_id == 2
        assert await shares_held(platform, share_id(boris, 1), share_id(boris, 2)) == {
            share_id(boris, 1),
            share_id(boris, 2),
        }  # the old one too: a backup from before the unmerge can still be restored

        r = await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])
        assert r.status_code == 200, r.text
        assert [i["value"] for i in r.json()["identities"] if i["kind"] == "email"] == [B_EMAIL]
        his = await access_export(client, keys, B_EMAIL)
        assert "203.0.113.77" in his and "Boris's order" in his
        assert [s for s in HERS if s in his] == []
        hers = await access_export(client, keys, A_EMAIL)
        assert all(s in hers for s in ("198.51.100.23", "AnnaUA/3.0", "for Анна", "Анна"))
        platform.keys.forget(boris)  # the page reads his key from its row and share
        r = await client.post(
            "/v1/segments/query",
            json={"purpose": "marketing", "channel": "email", "rules": {"all": []}, "limit": 10},
            headers=keys["marketing"],
        )
        assert r.status_code == 200, r.text
        assert sorted(m["address"] for m in r.json()["items"]) == sorted([A_EMAIL, B_EMAIL])
        verify = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
        assert verify["ok"] is True, verify
    finally:
        await other.close()


async def test_a_backup_taken_while_merged_reads_nothing_of_hers_once_she_is_erased(
    client, keys, platform, tmp_path
):
    backups: list = []

    async def back_up(boris: str, anna: str) -> None:
        backups.append(take_backup(platform, tmp_path))
        backups.append(await anext(backups[0]))

    boris, _, _ = await wrong_merge_undone(client, keys, while_merged=back_up)
    generator, backup_url = backups
    try:
        held = await row_of(backup_url, boris)
        assert held.key_id == 1 and held.split
        # until she is erased the backup can be restored: its half and the store's open it
        share = (await platform.keys.store.get([boris]))[boris]
        platform.keys.forget(boris)
        old = platform.keys.cipher_from_row(boris, 1, held.wrapped, share, remember=False)
        assert old.decrypt("profiles.first_name", held.first_name) == "Анна"  # hers, merged
        await erase(client, keys, A_EMAIL)
        # then the store's half of Boris's old key is gone: the backup opens nothing of it
        assert await shares_held(platform, share_id(boris, 1)) == set()
        assert await shares_held(platform, share_id(boris, 2)) == {share_id(boris, 2)}
        # her grant's evidence, recorded under his old key, reads nowhere now
        async with platform.db.read() as conn:
            owners = {
                r.evidence_owner
                for r in await conn.execute(
                    select(consent_ledger.c.evidence_owner).where(
                        consent_ledger.c.evidence.is_not(None)
                    )
                )
            }
        assert str(boris) in owners
        text = await access_export(client, keys, B_EMAIL)
        assert "203.0.113.77" in text and [s for s in HERS if s in text] == []
    finally:
        await generator.aclose()


async def test_erasing_the_holder_destroys_its_old_and_new_shares(client, keys, platform):
    boris, _, _ = await wrong_merge_undone(client, keys)
    await erase(client, keys, B_EMAIL)
    assert (await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])).status_code == 410
    assert await shares_held(platform, share_id(boris, 1), share_id(boris, 2)) == set()
    async with platform.db.read() as conn:
        left = (await conn.execute(select(key_share_owners.c.share_id))).all()
    assert left == []
    # Anna keeps hers: her grant's proof and her order
    hers = await access_export(client, keys, A_EMAIL)
    assert "198.51.100.23" in hers and "for Анна" in hers


async def test_a_holder_unmerged_twice_merges_and_reads_again(client, keys, platform):
    boris, anna, _ = await wrong_merge_undone(client, keys)
    # the wrong record again, and again undone: a third key, the second retired
    await post(
        client, keys, "/v1/profiles", {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    )
    r = await client.get(f"/v1/profiles/{anna}", headers=keys["admin"])
    assert r.json()["profile_id"] == str(boris) and r.json()["first_name"] == "Анна"
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    async with platform.db.read() as conn:
        assert (await platform.keys.ciphers(conn, [boris]))[boris].key_id == 3
    held = {share_id(boris, k) for k in (1, 2, 3)}
    assert await shares_held(platform, *held) == held
    await erase(client, keys, A_EMAIL)
    assert await shares_held(platform, *held) == {share_id(boris, 3)}
    # a process starting now finds the share of his newest key (under its own id)
    again = await open_platform(platform.settings, run_migrations=False)
    await again.close()
    text = await access_export(client, keys, B_EMAIL)
    assert "203.0.113.77" in text and "Boris's order" in text
    assert [s for s in HERS if s in text] == []


def test_a_later_snapshot_is_rebased_past_the_undone_merge() -> None:
    """What a later merge recorded as the holder's values before it, where the undone merge had
    brought them in, becomes what the holder had before the undone merge (plain Python)."""
    undone = SurvivorState(
        fields={"first_name": [None, "Анна"], "last_name": ["Фёдоров", "Фёдоров"]},
        plain={"city": ["Moscow", "Kazan"]},
        traits=[{"tier": "silver"}, {"tier": "gold", "pet": "cat"}],
        consents={},
        sources=[],
        ledger_seq=0,
        times={"city": "2026-01-01T00:00:00+00:00"},
    )
    later = SurvivorState(
        fields={"first_name": ["Анна", "Карл"], "last_name": ["Фёдоров", "Smith"]},
        plain={"city": ["Kazan", "Omsk"]},
        traits=[{"tier": "gold", "pet": "cat"}, {"tier": "platinum", "pet": "cat"}],
        consents={},
        sources=[],
        ledger_seq=0,
        times={"first_name": "2026-02-01T00:00:00+00:00", "city": "2026-02-01T00:00:00+00:00"},
    )
    assert rebased(later, undone)
    assert later.fields == {"first_name": [None, "Карл"], "last_name": ["Фёдоров", "Smith"]}
    assert later.plain == {"city": ["Moscow", "Omsk"]}
    # "pet" was hers and the later merge left it: gone from both sides; "tier" was changed
    assert later.traits == [{"tier": "silver"}, {"tier": "platinum"}]
    assert later.times == {"city": "2026-01-01T00:00:00+00:00"}
    assert not rebased(later, undone)  # nothing of hers left to rewrite


async def test_a_merge_whose_survivor_was_merged_on_is_undone_after_that_merge(
    client, keys, platform
):
    """Anna merged into Boris, Boris then merged into Xenia: Anna's merge is undone only once
    Boris's is (409 naming it): Boris's key and that merge's snapshot hold what she brought."""
    crm = {"source": "crm"}
    xenia = await post(client, keys, "/v1/profiles", {**crm, "email": "x.r@example.com"})
    boris = (await post(client, keys, "/v1/profiles", {**crm, "email": B_EMAIL}))["profile_id"]
    anna = await post(
        client,
        keys,
        "/v1/profiles",
        {**crm, "email": A_EMAIL, "phone": A_PHONE, "first_name": "Анна"},
    )
    wrong = {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    await post(client, keys, "/v1/profiles", wrong)
    await post(
        client, keys, "/v1/profiles", {"source": "w3", "email": "x.r@example.com", "phone": C_PHONE}
    )
    await post(client, keys, "/v1/profiles", {"source": "w4", "email": B_EMAIL, "phone": C_PHONE})
    got = (await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])).json()
    assert got["profile_id"] == xenia["profile_id"] and got["first_name"] == "Анна"

    r = await client.post(f"/v1/profiles/{anna['profile_id']}/unmerge", headers=keys["admin"])
    assert r.status_code == 409 and f"/v1/profiles/{boris}/unmerge" in r.text, r.text
    r = await client.post(f"/v1/profiles/{boris}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/profiles/{anna['profile_id']}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    await erase(client, keys, A_EMAIL)
    for who in (boris, xenia["profile_id"]):
        body = (await client.get(f"/v1/profiles/{who}", headers=keys["admin"])).json()
        assert body["first_name"] is None, body
    for email in (B_EMAIL, "x.r@example.com"):
        text = await access_export(client, keys, email)
        assert [s for s in HERS if s in text] == []


async def test_a_read_of_the_holder_racing_its_unmerge_answers_as_before_or_after(
    client, keys, platform
):
    """PostgreSQL: the profile's row read before the unmerge commits, its key after (found by
    review): the read is one snapshot, so it answers the customer as one or the other."""
    from cdp.profiles.unmerge import unmerge

    boris, anna, _ = await wrong_merge_undone(client, keys)
    await post(
        client, keys, "/v1/profiles", {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    )
    original = platform.keys.reader_cipher
    raced = []

    async def racing(conn, pid):  # type: ignore[no-untyped-def]
        if pid == boris and not raced:
            raced.append(pid)
            async with platform.db.write() as other:
                await unmerge(other, platform, anna, "test")
        return await original(conn, pid)

    platform.keys.reader_cipher = racing  # type: ignore[method-assign]
    try:
        r = await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])
        assert raced and r.status_code == 200, r.text
        r = await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])
        assert r.status_code == 200 and r.json()["first_name"] is None, r.text
    finally:
        platform.keys.reader_cipher = original  # type: ignore[method-assign]


async def test_a_push_grant_given_by_her_profile_id_while_merged_counts_for_neither(
    client, keys, platform
):
    """Push consent is the profile's: a grant naming her profile id while merged reached the
    holder (found by review). After the unmerge it counts for neither customer (a withdrawal
    from the unmerge stands in the ledger), and her proof is not copied for him."""
    push = {
        "profile_id": None,
        "purpose": "marketing",
        "channel": "push",
        "status": "granted",
        "source": "app",
        "evidence": EVIDENCE,
    }

    async def her_push_grant(boris: str, anna: str) -> None:
        await post(client, keys, "/v1/consents", {**push, "profile_id": anna})
        r = await client.get(f"/v1/profiles/{boris}/consents", headers=keys["admin"])
        assert r.json()["contactable"]["marketing"]["push"] is True  # merged: one customer

    boris, anna, _ = await wrong_merge_undone(client, keys, while_merged=her_push_grant)
    for who in (boris, anna):
        r = await client.get(f"/v1/profiles/{who}/consents", headers=keys["admin"])
        assert r.json()["contactable"]["marketing"]["push"] is False, r.json()
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "push", "rules": {"all": []}},
        headers=keys["marketing"],
    )
    assert r.json()["items"] == []
    verify = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert verify["ok"] is True, verify
    await erase(client, keys, A_EMAIL)
    text = await access_export(client, keys, B_EMAIL)
    assert [s for s in HERS if s in text] == [] and "203.0.113.77" in text
    # a new grant of his own makes him contactable again
    await post(client, keys, "/v1/consents", {**push, "profile_id": str(boris)})
    r = await client.get(f"/v1/profiles/{boris}/consents", headers=keys["admin"])
    assert r.json()["contactable"]["marketing"]["push"] is True
