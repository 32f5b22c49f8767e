"""A jurisdiction a record gave is not relaxed by a later record's country (found by review on
2026-12-07): a CRM said the customer is under EU rules (opt-in advertising); a shop's record
with only a US delivery country put them under US rules (opt-out), and they became contactable
for advertising without having agreed to it."""

from __future__ import annotations

from cdp.profiles.merge import takes_jurisdiction
from tests.helpers import contactable
from tests.test_erasure_after_unmerge import post

EMAIL, PHONE = "eva.given@example.com", "+4915112345678"


async def jurisdiction(client, keys, pid: str) -> str:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["jurisdiction"]


async def test_a_country_does_not_relax_a_jurisdiction_a_record_gave(client, keys):
    eu = {"source": "crm", "email": EMAIL, "jurisdiction": "EU"}
    pid = (await post(client, keys, "/v1/profiles", eu))["profile_id"]
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False  # opt-in

    await post(client, keys, "/v1/profiles", {"source": "shop", "email": EMAIL, "country": "US"})
    assert await jurisdiction(client, keys, pid) == "EU"
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.json()["country"] == "US"  # the country itself is the latest, as every value

    # a record that gives the jurisdiction changes it: the operator says the customer moved
    await post(
        client, keys, "/v1/profiles", {"source": "crm", "email": EMAIL, "jurisdiction": "US"}
    )
    assert await jurisdiction(client, keys, pid) == "US"
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True  # opt-out


async def test_a_jurisdiction_from_a_country_follows_the_latest_country(client, keys):
    pid = (
        await post(
            client, keys, "/v1/profiles", {"source": "shop", "email": EMAIL, "country": "DE"}
        )
    )["profile_id"]
    assert await jurisdiction(client, keys, pid) == "EU"
    await post(client, keys, "/v1/profiles", {"source": "shop", "email": EMAIL, "country": "US"})
    assert await jurisdiction(client, keys, pid) == "US"


async def test_in_one_batch_as_in_two_requests(client, keys):
    r = await client.post(
        "/v1/profiles/batch",
        json={
            "records": [
                {"source": "crm", "email": EMAIL, "jurisdiction": "EU"},
                {"source": "shop", "email": EMAIL, "country": "US"},
            ]
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    pid = r.json()["results"][0]["profile_id"]
    assert await jurisdiction(client, keys, pid) == "EU"


async def test_a_merge_keeps_the_given_jurisdiction_and_the_unmerge_gives_it_back(client, keys):
    """The older profile (the survivor) came from a US shop; the newer one a CRM put under EU
    rules. Merged, the customer is under EU rules; unmerged, each is as before."""
    shop = {"source": "shop", "phone": PHONE, "country": "US"}
    us = (await post(client, keys, "/v1/profiles", shop))["profile_id"]
    crm = {"source": "crm", "email": EMAIL, "jurisdiction": "EU"}
    eu = (await post(client, keys, "/v1/profiles", crm))["profile_id"]
    await post(client, keys, "/v1/profiles", {"source": "web", "email": EMAIL, "phone": PHONE})
    assert await jurisdiction(client, keys, us) == "EU"  # `eu` answers with the survivor
    assert (await contactable(client, keys, us))["marketing"]["sms"] is False

    r = await client.post(f"/v1/profiles/{eu}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await jurisdiction(client, keys, us), await jurisdiction(client, keys, eu)) == (
        "US",
        "EU",
    )
    # the shop's side is again a jurisdiction from a country: a later country changes it
    await post(client, keys, "/v1/profiles", {"source": "shop", "phone": PHONE, "country": "DE"})
    assert await jurisdiction(client, keys, us) == "EU"
    await post(client, keys, "/v1/profiles", {"source": "shop", "phone": PHONE, "country": "US"})
    assert await jurisdiction(client, keys, us) == "US"


def test_which_jurisdiction_a_merge_takes() -> None:
    # (absorbed given, survivor given, the absorbed profile's country won) -> takes absorbed's
    assert takes_jurisdiction(True, False, False) is True
    assert takes_jurisdiction(False, True, True) is False
    assert takes_jurisdiction(True, True, True) is True
    assert takes_jurisdiction(True, True, False) is False
    assert takes_jurisdiction(False, False, True) is True
    assert takes_jurisdiction(False, False, False) is False
