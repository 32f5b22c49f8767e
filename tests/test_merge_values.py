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


async def test_a_refused_merge_stores_the_record_in_the_profile_its_own_id_names(client, keys):
    """A shop's record for its customer F2 carries an email the shop's customer F1 holds: the
    guards refuse to merge two customers of one shop, and F2's new name must go to F2."""
    one = await upsert(client, keys, source="shop", external_id="F1", first_name="First")
    two = await upsert(client, keys, source="shop", external_id="F2", first_name="Second")
    await upsert(client, keys, source="shop", external_id="F1", email="y@example.com")
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "external_id": "F2", "email": "y@example.com", "first_name": "Z"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == two["profile_id"]
    assert [e["field"] for e in r.json()["ignored"]] == ["email"]

    async def name(pid):  # type: ignore[no-untyped-def]
        return (await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])).json()["first_name"]

    assert (await name(one["profile_id"]), await name(two["profile_id"])) == ("First", "Z")
    reviews = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert [(x["attached_to"], x["reason"]["code"]) for x in reviews] == [
        (two["profile_id"], "conflicting_external_ids")
    ]


async def test_each_value_given_last_wins_a_merge(client, keys):
    """Latest non-empty value wins, value by value: the name given last wins a merge, though
    the other profile was given a new city (and a trait) since. A merge used to take every value
    from the profile updated last, so the old name came back; a batch, which merges before it
    applies its records, gave the new name."""
    await upsert(client, keys, email="fw@example.com", first_name="Old", traits={"tier": "a"})
    await upsert(client, keys, source="shop", phone="+79162224455", first_name="New")
    await upsert(client, keys, source="shop", phone="+79162224455", traits={"tier": "b"})
    await upsert(client, keys, source="web", email="fw@example.com", city="Tver")
    await upsert(client, keys, source="cc", email="fw@example.com", phone="+79162224455")
    merged = await profile(client, keys, "fw@example.com")
    assert (merged["first_name"], merged["city"], merged["traits"]) == (
        "New",
        "Tver",
        {"tier": "b"},
    )
    # the same records in one batch make the same customer
    r = await client.post(
        "/v1/profiles/batch",
        json={
            "records": [
                {
                    "source": "crm",
                    "email": "fw2@example.com",
                    "first_name": "Old",
                    "traits": {"tier": "a"},
                },
                {"source": "shop", "phone": "+79162224466", "first_name": "New"},
                {"source": "shop", "phone": "+79162224466", "traits": {"tier": "b"}},
                {"source": "web", "email": "fw2@example.com", "city": "Tver"},
                {"source": "cc", "email": "fw2@example.com", "phone": "+79162224466"},
            ]
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    batched = await profile(client, keys, "fw2@example.com")
    assert (batched["first_name"], batched["city"], batched["traits"]) == (
        "New",
        "Tver",
        {"tier": "b"},
    )


async def test_a_merge_keeps_when_each_value_was_given_for_the_next_merge(client, keys):
    """A merge leaves each value with the time it was given: a city given to a third profile
    after the merged profiles' city, but before their merge, wins the next merge."""
    await upsert(client, keys, email="t1@example.com", first_name="First", city="Omsk")
    await upsert(client, keys, source="shop", phone="+79162224477", first_name="Second")
    await upsert(client, keys, source="erp", external_id="E-77", city="Sochi")
    await upsert(client, keys, source="cc", email="t1@example.com", phone="+79162224477")
    await upsert(client, keys, source="erp", external_id="E-77", email="t1@example.com")
    merged = await profile(client, keys, "t1@example.com")
    assert (merged["first_name"], merged["city"]) == ("Second", "Sochi")
    # and an unmerge of the last merge gives each side its values back, with their times
    r = await client.post(f"/v1/profiles/{merged['profile_id']}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    back = await profile(client, keys, "t1@example.com")
    assert (back["first_name"], back["city"]) == ("First", "Omsk")
