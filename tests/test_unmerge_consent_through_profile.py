"""Consent recorded on a wrongly merged profile that reached both customers' addresses through
the profile (a grant naming a profile id, "unsubscribe from everything" from a manage link),
then the merge undone (found by review on 2026-12-07). The ledger records whether an entry
named its address (`via_profile`); the unmerge counts such a grant for neither customer unless
their own entries grant the address, keeps such a withdrawal for both (fail closed), and copies
such an entry's evidence without who made it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from consent.merged_consent import Fact, granted_without
from consent.policy import load_policy
from tests.helpers import contactable, segment_members
from tests.test_erasure_after_unmerge import access_export, erase, post

B_EMAIL, A_EMAIL, A_PHONE = "boris.t@example.com", "anna.t@example.com", "+79161230077"
HIS = {"wording_id": "w-his", "method": "double_opt_in", "ip": "203.0.113.9", "user_agent": "BUA"}
HERS = {"wording_id": "w-her", "method": "checkbox", "ip": "198.51.100.41", "user_agent": "AUA/2"}
GRANT = {"purpose": "marketing", "channel": "email", "status": "granted", "source": "web"}


async def merged(client, keys, *, his_grant: bool = False):  # type: ignore[no-untyped-def]
    """Boris (email; `his_grant`: granting marketing by email), then Anna (email and phone);
    a wrong record merges Anna into Boris."""
    crm = {"source": "crm", "country": "RU"}
    boris = (await post(client, keys, "/v1/profiles", {**crm, "email": B_EMAIL}))["profile_id"]
    if his_grant:
        await post(client, keys, "/v1/consents", {**GRANT, "email": B_EMAIL, "evidence": HIS})
    anna = await post(client, keys, "/v1/profiles", {**crm, "email": A_EMAIL, "phone": A_PHONE})
    await post(
        client, keys, "/v1/profiles", {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    )
    return boris, anna["profile_id"]


async def unmerge(client, keys, anna: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text


async def events(client, keys, email: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = await client.get(
        "/v1/audit/consent-events", params={"email": email}, headers=keys["compliance"]
    )
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def verified(client, keys) -> bool:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    return r.json()["ok"] is True


async def test_a_grant_naming_her_profile_id_while_merged_counts_for_neither(client, keys):
    boris, anna = await merged(client, keys)
    await post(client, keys, "/v1/consents", {**GRANT, "profile_id": anna, "evidence": HERS})
    assert (await contactable(client, keys, boris))["marketing"]["email"] is True
    on_his = [e for e in await events(client, keys, B_EMAIL) if e["subject"]["address"] == B_EMAIL]
    assert [(e["status"], e["subject"]["via_profile"]) for e in on_his] == [("granted", True)]

    await unmerge(client, keys, anna)
    for who in (boris, anna):
        assert (await contactable(client, keys, who))["marketing"]["email"] is False
    assert await segment_members(client, keys, "marketing", "email") == []
    for email in (B_EMAIL, A_EMAIL):
        last = (await events(client, keys, email))[-1]
        assert (last["status"], last["source"], last["method"]) == (
            "withdrawn",
            "unmerge",
            "unmerge",
        )
    assert await verified(client, keys)

    # his own grant, naming his address, makes him contactable again
    await post(client, keys, "/v1/consents", {**GRANT, "email": B_EMAIL, "evidence": HIS})
    assert (await contactable(client, keys, boris))["marketing"]["email"] is True
    assert [m["profile_id"] for m in await segment_members(client, keys, "marketing", "email")] == [
        boris
    ]


async def test_his_own_grant_stands_and_hers_named_by_address_too(client, keys):
    """Only what a grant through the merged profile alone granted is withdrawn: Boris granted
    before the merge, Anna named her own address while merged."""
    boris, anna = await merged(client, keys, his_grant=True)
    await post(client, keys, "/v1/consents", {**GRANT, "email": A_EMAIL, "evidence": HERS})
    # a CRM grants again by Anna's profile id: it reaches both addresses
    await post(client, keys, "/v1/consents", {**GRANT, "profile_id": anna, "evidence": HERS})

    await unmerge(client, keys, anna)
    for who in (boris, anna):
        assert (await contactable(client, keys, who))["marketing"]["email"] is True
    for email in (B_EMAIL, A_EMAIL):
        assert [e for e in await events(client, keys, email) if e["source"] == "unmerge"] == []
    assert await verified(client, keys)


async def test_her_unsubscribe_from_everything_binds_both_and_leaves_him_no_trace_of_her(
    client, keys
):
    boris, anna = await merged(client, keys, his_grant=True)
    link = await client.post(
        "/v1/preference-links", json={"email": A_EMAIL}, headers=keys["ingest"]
    )
    assert link.status_code == 201, link.text
    r = await client.post(
        f"/preferences/{link.json()['token']}/opt-out",
        data={"lang": "en"},
        headers={"User-Agent": "AnnaBrowser/7.1"},
    )
    assert r.status_code == 303, r.text
    hers = [e for e in await events(client, keys, B_EMAIL) if e["method"] == "preference_centre"]
    assert hers and all(e["evidence"]["user_agent"] == "AnnaBrowser/7.1" for e in hers)

    await unmerge(client, keys, anna)
    for who in (boris, anna):  # her withdrawal stands for both: fail closed
        assert (await contactable(client, keys, who))["marketing"]["email"] is False
    for email in (B_EMAIL, A_EMAIL):
        on_it = [e for e in await events(client, keys, email) if e["subject"]["address"] == email]
        through = [e for e in on_it if e["method"] == "preference_centre"]
        assert through and all(e["subject"]["via_profile"] is True for e in through)
        for e in through:  # what was withdrawn, with which wording: not who, nor from where
            assert e["evidence_readable"] is True
            assert set(e["evidence"]) == {"wording_id", "method"}, e["evidence"]
    his_own = [e for e in await events(client, keys, B_EMAIL) if e["method"] == "double_opt_in"]
    assert [e["evidence"]["user_agent"] for e in his_own] == ["BUA"]

    await erase(client, keys, A_EMAIL)
    text = await access_export(client, keys, B_EMAIL)
    assert "AnnaBrowser/7.1" not in text and "203.0.113.9" in text
    assert await verified(client, keys)


# -------------------------------------------------------------------- the rule, without HTTP

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MERGED_SINCE = 10  # the ledger's head when the merge was made


def fact(seq: int, status: str, hours: int, *, via: bool | None = False, channel: str = "email"):  # type: ignore[no-untyped-def]
    at = T0 + timedelta(hours=hours)
    return Fact(seq, "email", "marketing", channel, status, at, at, via, True)


def decide(*facts: Fact, erased_at: datetime | None = None) -> bool:
    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    return granted_without(policy, facts, "marketing", "email", MERGED_SINCE, erased_at)


def test_the_address_is_granted_only_by_what_its_own_entries_say() -> None:
    through = fact(12, "granted", 5, via=True)
    assert decide(through) is False  # only the grant through the merged profile
    assert decide(fact(3, "granted", 1), through) is True  # his grant before the merge
    assert decide(fact(11, "granted", 2), through) is True  # named while merged
    # a grant through the profile before the merge was his own profile's: it counts
    assert decide(fact(4, "granted", 1, via=True), through) is True
    # his grant, then his withdrawal: the grant through the profile does not revive it
    assert decide(fact(3, "granted", 1), fact(11, "withdrawn", 2), through) is False
    # a withdrawal of every channel covers email
    assert decide(fact(3, "granted", 1), fact(11, "withdrawn", 2, channel="*"), through) is False
    # a backdated withdrawal recorded after the grant through the profile still counts
    assert decide(fact(3, "granted", 1), through, fact(13, "withdrawn", 2)) is False
    # a former owner's grant, erased before the address came to him, is not his
    assert decide(fact(3, "granted", 1), through, erased_at=T0 + timedelta(hours=2)) is False
    # a grant that was not effective is left out (the safe side)
    stale = Fact(5, "email", "marketing", "email", "granted", T0, T0, False, False)
    assert decide(stale, through) is False
