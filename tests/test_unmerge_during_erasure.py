"""An unmerge while the customer's erasure request is open (found by the linearizability
review, tests/test_linearizability.py, on PostgreSQL). An erasure request names one address of
a customer who is, at that moment, two profiles merged into one; the erasure runs later (right
after the answer, or by the worker once it is back). An unmerge in between split the customer,
and the erasure then erased only the half that kept the request's profile: the half holding the
address the requester named stayed, readable by that address, with its data and its key. The
unmerge now waits for no one: it is refused (409, naming the request) while an erasure of the
customer is open, and the erasure completes on the customer as the request found them."""

from __future__ import annotations

import uuid

from cdp.profiles.identifiers import parse_identifier
from consent.dsr.erasure import process
from consent.dsr.requests import submit_erasure
from tests.helpers import record

ANNA, BORIS = "anna.u@example.com", "boris.u@example.com"


async def test_an_unmerge_waits_for_the_open_erasure_of_the_customer(platform, client, keys):

    anna = (await record(client, keys, email=ANNA))["profile_id"]
    boris = (await record(client, keys, email=BORIS, external_id="C-7"))["profile_id"]
    merged = await record(client, keys, email=ANNA, external_id="C-7")  # a wrong link
    assert merged["merged_profile_ids"] == [boris]

    # Boris asks for erasure, naming his address; the erasure has not run yet
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=BORIS)
    asked = await submit_erasure(platform, ident, requested_by="customer", actor="test")

    unmerged = await client.post(f"/v1/profiles/{boris}/unmerge", headers=keys["admin"])

    assert await process(platform, uuid.UUID(str(asked.request_id)), "test") == "completed"
    r = await client.get("/v1/profiles", params={"email": BORIS}, headers=keys["admin"])
    assert r.status_code == 404, "the address the erasure named still finds a customer"
    for pid in (anna, boris):
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 410, r.text
    assert unmerged.status_code == 409, unmerged.text
    assert str(asked.request_id) in unmerged.json()["detail"]


async def test_a_reviewed_merge_waits_for_the_open_erasure_of_either_customer(
    platform, client, keys
):
    """The other side of an unmerge: a reviewer accepting the matcher's suggestion merged a
    look-alike into a customer whose erasure was open, and the erasure then erased him too,
    beyond any unmerge. The merge is refused (409, naming the request) until it is done."""
    from cdp.matching.suggestions import run_matching

    person = {"first_name": "Анна", "last_name": "Ожидающая", "birth_date": "1990-05-01"}
    anna = (await record(client, keys, email=ANNA, city="Moscow", **person))["profile_id"]
    alike = (await record(client, keys, email=BORIS, city="Moscow", **person))["profile_id"]
    assert (await run_matching(platform, 0.3)).stored == 1
    (suggestion,) = (
        await client.get("/v1/match-suggestions?status=open", headers=keys["admin"])
    ).json()["items"]

    ident = parse_identifier(platform.policy, platform.keys.indexer, email=ANNA)
    asked = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    accepted = await client.post(
        f"/v1/match-suggestions/{suggestion['suggestion_id']}/accept", headers=keys["admin"]
    )
    assert accepted.status_code == 409, accepted.text
    assert str(asked.request_id) in accepted.json()["detail"]

    assert await process(platform, uuid.UUID(str(asked.request_id)), "test") == "completed"
    r = await client.get(f"/v1/profiles/{anna}", headers=keys["admin"])
    assert r.status_code == 410
    r = await client.get(f"/v1/profiles/{alike}", headers=keys["admin"])
    assert r.status_code == 200, "a customer who asked for nothing was erased"
    assert r.json()["first_name"] == "Анна"
