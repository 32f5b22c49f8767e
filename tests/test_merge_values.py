"""What a merge keeps: the fresher profile's values, and the law that goes with its country."""

from __future__ import annotations


async def upsert(client, keys, **body):  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **body}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def profile(client, keys, email):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles?email={email}", headers=keys["admin"])
    assert r.status_code == 200
    return r.json()


async def test_the_jurisdiction_goes_with_the_country_that_wins_a_merge(client, keys):
    await upsert(client, keys, email="jur@example.com", country="US")
    await upsert(client, keys, source="shop", phone="+79164440001", country="RU", city="Москва")
    await upsert(client, keys, source="cc", email="jur@example.com", phone="+79164440001")
    merged = await profile(client, keys, "jur@example.com")
    assert (merged["country"], merged["city"], merged["jurisdiction"]) == ("RU", "Москва", "RU")
    # Russian law: marketing email needs its own consent, which this customer never gave
    assert merged["consents"]["contactable"]["marketing"]["email"] is False
    # and an unmerge gives each side its own law back
    r = await client.post(f"/v1/profiles/{merged['profile_id']}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await profile(client, keys, "jur@example.com"))["jurisdiction"] == "US"


async def test_a_record_with_identifiers_only_does_not_make_stale_values_win(client, keys):
    await upsert(client, keys, email="lw@example.com", first_name="Old", city="Omsk")
    await upsert(client, keys, source="shop", phone="+79162223344", first_name="New", city="Sochi")
    await upsert(client, keys, source="web", email="lw@example.com")  # no values: no news
    await upsert(client, keys, source="cc", email="lw@example.com", phone="+79162223344")
    merged = await profile(client, keys, "lw@example.com")
    assert (merged["first_name"], merged["city"]) == ("New", "Sochi")
