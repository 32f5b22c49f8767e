"""Speculative encryption in import workers (cdp.profiles.sealing).

A worker seals each record for the new profile it would create. A record that does create a
profile of its own is stored with exactly those ciphertexts; a record that joins an existing
profile, or shares an identifier with another record of its batch, is encrypted under the
surviving profile's key and its speculative key is never stored. Either way everything
decrypts to the values imported, and nothing is stored in plaintext.
"""

from __future__ import annotations

import csv

from sqlalchemy import select

from cdp.db.tables import identities, profile_keys, profiles
from cdp.importer import run_import
from cdp.profiles.service import prepare_with, store_prepared
from consent.ledger import owner_ciphers, read_evidence
from consent.tables import consent_ledger
from tests.helpers import count, holds_plaintext, raw_database_bytes

HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "postal_address",
    "birth_date",
    "country",
    "consent.marketing.email",
    "consent.marketing.email.wording_id",
]


async def _view(client, keys, email):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles?email={email}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_sealed_records_keep_their_ciphertexts_and_joiners_are_reencrypted(
    platform, client, keys
):
    old = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": "old@example.com", "first_name": "Ольга"},
        headers=keys["ingest"],
    )
    assert old.status_code == 201, old.text
    old_id = old.json()["profile_id"]

    master = platform.keys.master
    raws = [
        {"source": "crm", "email": "new@example.com", "phone": "+79161112233",
         "first_name": "Нина", "postal_address": "ул. Новая, 1"},
        {"source": "crm", "email": "old@example.com", "last_name": "Старова"},
        {"source": "crm", "external_id": "T1", "email": "twin@example.com", "first_name": "Тимур"},
        {"source": "crm", "external_id": "T2", "email": "twin@example.com", "last_name": "Двойнев"},
    ]  # fmt: skip
    prepared = [
        prepare_with(r, platform.policy, platform.keys.indexer, master=master) for r in raws
    ]
    assert all(x.sealed is not None for x in prepared)
    outcomes = await store_prepared(platform, prepared, "test")

    new, joiner, twin1, twin2 = prepared
    # the record alone uses the worker's profile id, key and ciphertexts as they are
    assert outcomes[0].profile_id == new.sealed.profile_id and outcomes[0].created
    async with platform.db.read() as conn:
        row = (
            await conn.execute(select(profiles).where(profiles.c.id == new.sealed.profile_id))
        ).one()
        assert row.first_name == new.sealed.fields["first_name"]
        assert row.postal_address == new.sealed.fields["postal_address"]
        stored = dict(
            (
                await conn.execute(
                    select(identities.c.bidx, identities.c.value).where(
                        identities.c.profile_id == new.sealed.profile_id
                    )
                )
            ).all()
        )
        assert [stored[k.bidx] for k in new.keys] == new.sealed.values
        wrapped = dict(
            (await conn.execute(select(profile_keys.c.profile_id, profile_keys.c.wrapped))).all()
        )
    # records that joined a profile: their speculative keys are not stored
    assert joiner.profile_id not in wrapped and twin2.profile_id not in wrapped
    # the twins' profile has the id drawn for the first twin (their order) and the key the
    # worker sealed it with, but not its ciphertexts, made for that record alone: its fields
    # are encrypted again from both records
    assert outcomes[2].profile_id == outcomes[3].profile_id == twin1.profile_id
    assert twin1.sealed is not None and wrapped[twin1.profile_id] == twin1.sealed.wrapped
    async with platform.db.read() as conn:
        twins_row = (
            await conn.execute(select(profiles).where(profiles.c.id == twin1.profile_id))
        ).one()
    assert twins_row.first_name not in (None, twin1.sealed.fields["first_name"])
    assert str(outcomes[1].profile_id) == old_id and not outcomes[1].created
    assert await count(platform, profile_keys) == await count(platform, profiles) == 3

    fresh = await _view(client, keys, "new@example.com")
    assert fresh["profile_id"] == str(new.sealed.profile_id)
    assert (fresh["first_name"], fresh["postal_address"]) == ("Нина", "ул. Новая, 1")
    assert sorted(i["value"] for i in fresh["identities"]) == ["+79161112233", "new@example.com"]
    joined = await _view(client, keys, "old@example.com")
    assert (joined["first_name"], joined["last_name"]) == ("Ольга", "Старова")
    platform.keys._keys.clear()  # read the twins' key back from its two stored halves
    twins = await _view(client, keys, "twin@example.com")
    assert (twins["first_name"], twins["last_name"]) == ("Тимур", "Двойнев")
    assert sorted(i["value"] for i in twins["identities"]) == ["T1", "T2", "twin@example.com"]


async def test_import_with_a_worker_process_decrypts_and_stores_no_plaintext(
    platform, client, keys, tmp_path
):
    await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": "known7@example.com", "first_name": "Прежняя"},
        headers=keys["ingest"],
    )
    src = tmp_path / "big.csv"
    n = 60
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(n):
            email = "known7@example.com" if i == 7 else f"secret.sealed{i}@example.com"
            if i == 9:
                email = "secret.sealed8@example.com"  # shares an email with row 8
            w.writerow(
                [
                    f"E{i}",
                    email,
                    f"+7916777{i:04d}",
                    f"Секретная{i}",
                    f"Запечатанная{i}",
                    f"ул. Скрытая, {i}",
                    "1980-01-02",
                    "RU",
                    "granted" if i % 2 else "",
                    "nl-v3" if i % 2 else "",
                ]
            )
    summary = await run_import(platform, src, "crm", workers=1)
    assert (summary.rows, summary.rejected_rows) == (n, 0)
    assert (summary.created, summary.joined) == (n - 2, 2)
    assert summary.consents_recorded == n // 2
    assert await count(platform, consent_ledger) == n // 2

    for i in (0, 1, 8, 30, 59):
        view = await _view(client, keys, f"secret.sealed{i}@example.com")
        assert view["first_name"] == ("Секретная9" if i == 8 else f"Секретная{i}")
        assert view["postal_address"] == ("ул. Скрытая, 9" if i == 8 else f"ул. Скрытая, {i}")
        assert view["birth_date"] == "1980-01-02"
        assert f"+7916777{i:04d}" in {x["value"] for x in view["identities"]}
    # each grant's evidence was encrypted under its profile's key (the worker's, when adopted)
    async with platform.db.read() as conn:
        rows = (await conn.execute(select(consent_ledger))).all()
        ciphers = await owner_ciphers(conn, platform, {r.evidence_owner for r in rows})
    assert len(rows) == n // 2
    for r in rows:
        assert r.evidence_owner == str(r.profile_id)
        assert read_evidence(r, ciphers)[0]["wording_id"] == "nl-v3"
    known = await _view(client, keys, "known7@example.com")
    assert (known["first_name"], known["last_name"]) == ("Секретная7", "Запечатанная7")
    assert await count(platform, profile_keys) == await count(platform, profiles) == n - 1

    raw = await raw_database_bytes(platform)
    for i in range(n):
        for value in (f"secret.sealed{i}@example.com", f"Запечатанная{i}", f"ул. Скрытая, {i}"):
            assert not holds_plaintext(raw, value), i
        assert not holds_plaintext(raw, f"7916777{i:04d}")


async def test_worker_results_carry_any_trait_value(platform, client, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Integers too large for msgpack (a 30-digit loyalty number) reach the store as they were
    read: the chunk travels back from the worker by the slower route instead of failing."""
    src = tmp_path / "big.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "traits.loyalty", "traits.tier"])
        w.writerow(["big.trait@example.com", "123456789012345678901234567890", "gold"])
        w.writerow(["small.trait@example.com", "42", "silver"])
    summary = await run_import(platform, src, "crm", workers=1)
    assert (summary.rows, summary.rejected_rows, summary.created) == (2, 0, 2)
    big = await _view(client, keys, "big.trait@example.com")
    assert big["traits"] == {"loyalty": 123456789012345678901234567890, "tier": "gold"}
    small = await _view(client, keys, "small.trait@example.com")
    assert small["traits"] == {"loyalty": 42, "tier": "silver"}
