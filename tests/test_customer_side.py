"""The customer's side of stopping messages and being forgotten, end to end over HTTP (both
backends): whatever way they said it, the very next members page, export and ad-hoc query
leave them out, and a later import that brings them back does not make them contactable."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from cdp.ids import utcnow
from consent.dsr.worker import run_pending
from consent.outbox.tables import outbox_events
from consent.subjects import profile_subject
from consent.tables import consent_ledger
from consent.tokens import TokenClaims, issue
from tests.helpers import count

UNDATED = {"wording_id": "crm-2019", "method": "import"}  # no occurred_at: an old CRM file


def undated(channel: str) -> dict:  # type: ignore[type-arg]
    return {"purpose": "marketing", "channel": channel, "status": "granted", "evidence": UNDATED}


def dated(channel: str, *, days: float) -> dict:  # type: ignore[type-arg]
    at = (utcnow() - timedelta(days=days)).isoformat().replace("+00:00", "Z")
    return {**undated(channel), "occurred_at": at}


def unsubscribe_token(platform, pid: str, email: str) -> str:  # type: ignore[no-untyped-def]
    """The unsubscribe token a segment member carries for this email."""
    claims = TokenClaims(
        uuid.UUID(pid), "email", platform.keys.indexer.email(email), "marketing", "email"
    )
    return issue(platform.keys.token_key, claims)


async def members(client, keys, channel: str = "push") -> set[str]:  # type: ignore[no-untyped-def]
    """Who a marketing campaign to everyone on `channel` may reach: members page, export and
    ad-hoc query must agree."""
    rules = {"field": "country", "op": "exists"}
    body = {"name": f"all {channel}", "purpose": "marketing", "channel": channel, "rules": rules}
    seg = await client.post("/v1/segments", json=body, headers=keys["marketing"])
    assert seg.status_code == 201, seg.text
    sid = seg.json()["id"]
    page = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
    export = await client.get(
        f"/v1/segments/{sid}/export", params={"format": "ndjson"}, headers=keys["marketing"]
    )
    query = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": channel, "rules": rules, "limit": 1000},
        headers=keys["marketing"],
    )
    assert page.status_code == export.status_code == query.status_code == 200
    exported = {line.split('"profile_id":"')[1][:36] for line in export.text.splitlines() if line}
    found = {m["profile_id"] for m in page.json()["items"]}
    assert found == exported == {m["profile_id"] for m in query.json()["items"]}
    return found


async def audit_ok(client, keys) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.status_code == 200 and r.json()["ok"] is True, r.json()


async def contactable(client, keys, pid: str) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["contactable"]["marketing"]


async def test_an_undated_push_grant_does_not_undo_stop_all_marketing_from_an_unseen_address(
    client, keys
):
    out = await client.post(
        "/v1/opt-outs",
        json={"email": "never.seen@example.com", "source": "esp"},
        headers=keys["ingest"],
    )
    assert out.status_code == 200 and out.json() == {"profile_ids": [], "suppressed": True}
    r = await client.post(  # last year's CRM export, consents without a date
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "never.seen@example.com",
            "country": "RU",
            "consents": [undated("email"), undated("push")],
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    pid = r.json()["profile_id"]
    assert await contactable(client, keys, pid) == dict.fromkeys(
        ("email", "sms", "phone", "push", "messenger"), False
    )
    assert pid not in await members(client, keys)
    await audit_ok(client, keys)


async def test_a_forgotten_customer_brought_back_by_old_imports_is_never_contacted(
    client, keys, platform
):
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "forget.me@example.com",
            "phone": "+79161234400",
            "country": "RU",
            "consents": [dated("email", days=30), dated("sms", days=30)],
        },
        headers=keys["ingest"],
    )
    link = await client.post(
        "/v1/preference-links", json={"email": "forget.me@example.com"}, headers=keys["ingest"]
    )
    token = link.json()["token"]
    asked = await client.post(
        f"/preferences/{token}/erasure", data={"confirm": "yes"}, headers={"Accept-Language": "ru"}
    )
    assert asked.status_code == 202 and "Ваш запрос на удаление данных принят" in asked.text
    await run_pending(platform)
    gone = await client.get(f"/preferences/{token}", headers={"Accept-Language": "ru"})
    assert gone.status_code == 410 and "не свяжемся с вами" in gone.text
    back = await client.post(  # last year's CRM file: undated consents
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "forget.me@example.com",
            "country": "RU",
            "consents": [undated("email"), undated("push"), undated("messenger")],
        },
        headers=keys["ingest"],
    )
    assert back.status_code == 201, back.text
    pid = back.json()["profile_id"]
    assert uuid.UUID(pid) != uuid.UUID(r.json()["profile_id"])
    again = await client.post(  # and the shop's, with the grant she gave a month ago
        "/v1/profiles",
        json={
            "source": "shop",
            "email": "forget.me@example.com",
            "phone": "+79161234400",
            "consents": [dated("email", days=30), dated("sms", days=30)],
        },
        headers=keys["ingest"],
    )
    assert again.status_code == 200 and again.json()["profile_id"] == pid, again.text
    assert not any((await contactable(client, keys, pid)).values())
    for channel in ("email", "sms", "push", "messenger"):
        assert pid not in await members(client, keys, channel)
    await audit_ok(client, keys)


async def test_a_forgotten_customer_brought_back_by_external_id_alone_is_never_contacted(
    client, keys, platform
):
    """A CRM that syncs by its own customer number brings an erased customer back with no email
    or phone, with last year's push and messenger grants: before, nothing tied the number to the
    erasure, and the app pushed advertising to someone who had asked to be forgotten."""
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "C-9001",
            "email": "forget.me.too@example.com",
            "country": "RU",
            "consents": [dated("email", days=30), dated("push", days=30)],
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    asked = await client.post(
        "/v1/erasure-requests",
        json={"email": "forget.me.too@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert asked.status_code == 202, asked.text
    await run_pending(platform)
    gone = await client.get(f"/v1/profiles/{r.json()['profile_id']}", headers=keys["admin"])
    assert gone.status_code == 410
    async with platform.db.read() as conn:
        announced = await conn.execute(
            select(outbox_events.c.address_kind).where(outbox_events.c.kind == "suppression.added")
        )
        assert {kind for (kind,) in announced} == {"email", "external_id"}
    for consents in (
        [undated("push"), undated("messenger")],  # last year's file, no dates
        [dated("push", days=30), dated("messenger", days=30)],  # dated before the erasure
    ):
        back = await client.post(
            "/v1/profiles",
            json={"source": "crm", "external_id": "C-9001", "country": "RU", "consents": consents},
            headers=keys["ingest"],
        )
        assert back.status_code in (200, 201), back.text
        pid = back.json()["profile_id"]
        assert not any((await contactable(client, keys, pid)).values())
        for channel in ("push", "messenger"):
            assert pid not in await members(client, keys, channel)
    # the same number from another system is another customer number: not the erased customer
    other = await client.post(
        "/v1/profiles",
        json={
            "source": "shop",
            "external_id": "C-9001",
            "country": "RU",
            "consents": [undated("push")],
        },
        headers=keys["ingest"],
    )
    assert other.status_code == 201, other.text
    assert (await contactable(client, keys, other.json()["profile_id"]))["push"] is True
    # a grant given after the erasure is the customer's new choice
    fresh = await client.post(
        "/v1/consents",
        json={
            "source": "crm",
            "external_id": "C-9001",
            "purpose": "marketing",
            "channel": "push",
            "status": "granted",
            "occurred_at": utcnow().isoformat().replace("+00:00", "Z"),
            "evidence": {"wording_id": "app-v2", "method": "checkbox"},
        },
        headers=keys["ingest"],
    )
    assert fresh.status_code == 201, fresh.text
    assert (await contactable(client, keys, pid))["push"] is True
    assert pid in await members(client, keys, "push")
    await audit_ok(client, keys)


async def test_unsubscribe_from_everything_in_the_preference_centre_reaches_a_phone_learned_later(
    client, keys, platform
):
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "C-501",
            "email": "unsub.all@example.com",
            "country": "RU",
            "consents": [dated("email", days=5)],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    token = unsubscribe_token(platform, pid, "unsub.all@example.com")
    done = await client.post(f"/preferences/{token}/opt-out", data={"lang": "ru"})
    assert done.status_code == 303
    assert not any((await contactable(client, keys, pid)).values())
    # the CRM syncs the phone the customer gave two days before they said "stop everything"
    later = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "C-501",
            "phone": "+79165010000",
            "consents": [dated("sms", days=2)],
        },
        headers=keys["ingest"],
    )
    assert later.status_code == 200 and later.json()["profile_id"] == pid, later.text
    assert not any((await contactable(client, keys, pid)).values())
    query = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "sms", "rules": {"all": []}, "limit": 1000},
        headers=keys["marketing"],
    )
    assert query.status_code == 200 and query.json()["items"] == [], query.text
    # a grant the customer gives after it counts
    regrant = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "C-501",
            "phone": "+79165010000",
            "consents": [dated("sms", days=0)],
        },
        headers=keys["ingest"],
    )
    assert regrant.status_code == 200, regrant.text
    assert (await contactable(client, keys, pid))["sms"] is True
    await audit_ok(client, keys)


BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_the_unsubscribe_page_says_which_address_it_stops_masked(client, keys, platform):
    """A customer with two addresses could not tell which one a link stopped: the page named
    the purpose and the channel only. It shows the address the link stops, masked as the
    preference centre masks it; nothing for a profile's channel, nor once the address is
    erased."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "work.mail@example.com", "country": "RU"},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "home.mail@example.org", "external_id": "c-1"},
        headers=keys["ingest"],
    )
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "work.mail@example.com", "external_id": "c-1"},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == pid, r.json()  # one customer, two emails
    headers = {"Accept": BROWSER, "Accept-Language": "en"}
    home = unsubscribe_token(platform, pid, "home.mail@example.org")
    page = await client.get(f"/v1/unsubscribe/{home}", headers=headers)
    assert page.status_code == 200
    assert "Address: h***@example.org" in page.text and "w***@" not in page.text
    assert "home.mail" not in page.text
    push = issue(
        platform.keys.token_key,
        TokenClaims(uuid.UUID(pid), "profile", uuid.UUID(pid).bytes, "marketing", "push"),
    )
    page = await client.get(f"/v1/unsubscribe/{push}", headers=headers)
    assert page.status_code == 200 and "Address:" not in page.text

    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "home.mail@example.org", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202
    await run_pending(platform)
    page = await client.get(f"/v1/unsubscribe/{home}", headers=headers)
    assert page.status_code == 200 and "Address:" not in page.text and "***" not in page.text


async def test_the_unsubscribe_link_speaks_the_customers_language_and_answers_people_with_pages(
    client, keys, platform
):
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "olga.petrova@example.com",
            "first_name": "Ольга",
            "country": "RU",
            "consents": [dated("email", days=1)],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    token = unsubscribe_token(platform, pid, "olga.petrova@example.com")
    before = await count(platform, consent_ledger)

    pages = {
        "ru": await client.get(f"/v1/unsubscribe/{token}", headers={"Accept": BROWSER}),
        "en": await client.get(
            f"/v1/unsubscribe/{token}", headers={"Accept": BROWSER, "Accept-Language": "en-GB"}
        ),
    }
    for lang, page in pages.items():  # RU customer: Russian unless the browser asks otherwise
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f'<html lang="{lang}">' in page.text
        assert "<script" not in page.text and "olga" not in page.text.lower()
        assert "Ольга" not in page.text
        assert 'name="List-Unsubscribe" value="One-Click"' in page.text
        assert f'action="/v1/unsubscribe/{token}"' in page.text
        assert page.headers["cache-control"] == "no-store"
    assert "Отписаться" in pages["ru"].text and "Реклама и предложения" in pages["ru"].text
    assert "Unsubscribe" in pages["en"].text
    assert await count(platform, consent_ledger) == before  # GET changes nothing

    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for method in ("GET", "POST"):
        bad = await client.request(
            method,
            f"/v1/unsubscribe/{forged}",
            headers={"Accept": BROWSER, "Accept-Language": "ru"},
        )
        assert bad.status_code == 404 and bad.headers["content-type"].startswith("text/html")
        assert "Ссылка недействительна" in bad.text and "olga" not in bad.text.lower()
    assert await count(platform, consent_ledger) == before

    # the page's button, in a browser without JavaScript: a page saying it is done
    done = await client.post(
        f"/v1/unsubscribe/{token}",
        data={"List-Unsubscribe": "One-Click"},
        headers={"Accept": BROWSER, "Accept-Language": "ru-RU,ru;q=0.9"},
    )
    assert done.status_code == 200 and done.headers["content-type"].startswith("text/html")
    assert '<html lang="ru">' in done.text and "Вы отписались" in done.text
    assert "olga" not in done.text.lower()
    assert (await contactable(client, keys, pid))["email"] is False
    # a mail client's one-click POST (RFC 8058) and the sending tools still get JSON
    again = await client.post(
        f"/v1/unsubscribe/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert again.status_code == 200 and again.json() == {"unsubscribed": True, "suppressed": True}


async def test_a_mail_scanners_head_on_the_unsubscribe_link_is_answered_and_changes_nothing(
    client, keys, platform
):
    """Mail scanners send HEAD before they follow a link; it was a 405 (the link looked
    broken). It answers as GET, without the body, and like GET it changes nothing."""
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "head.scan@example.com",
            "country": "RU",
            "consents": [dated("email", days=1)],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    token = unsubscribe_token(platform, pid, "head.scan@example.com")
    before = await count(platform, consent_ledger), await count(platform, outbox_events)
    for headers in ({}, {"Accept": BROWSER}):
        head = await client.head(f"/v1/unsubscribe/{token}", headers=headers)
        got = await client.get(f"/v1/unsubscribe/{token}", headers=headers)
        assert head.status_code == got.status_code == 200, head.text
        assert head.content == b""
        for name in ("content-type", "content-length", "cache-control"):
            assert head.headers[name] == got.headers[name], name
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    bad = await client.head(f"/v1/unsubscribe/{forged}", headers={"Accept": BROWSER})
    assert bad.status_code == 404 and bad.content == b""
    assert (await count(platform, consent_ledger), await count(platform, outbox_events)) == before
    assert (await contactable(client, keys, pid))["email"] is True
    allowed = (await client.options(f"/v1/unsubscribe/{token}")).headers["allow"].split(", ")
    assert "HEAD" in allowed


ANNA_EMAIL, ANNA_PHONE = "anna.scope@example.com", "+79161239900"


async def _one_click(client, keys, platform, pid: str) -> int:  # type: ignore[no-untyped-def]
    token = unsubscribe_token(platform, pid, ANNA_EMAIL)
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = await client.post(
        f"/v1/unsubscribe/{token}", content="List-Unsubscribe=One-Click", headers=form
    )
    return r.status_code


async def _sms_stop(client, keys, platform, pid: str) -> int:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/inbound/sms",
        json={"from": "8 916 123-99-00", "text": " Стоп! "},
        headers=keys["ingest"],
    )
    assert r.json()["stop"] is True
    return r.status_code


async def _api_stop_all(client, keys, platform, pid: str) -> int:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/opt-outs", json={"email": ANNA_EMAIL, "source": "esp"}, headers=keys["ingest"]
    )
    return r.status_code


async def _centre_stop_all(client, keys, platform, pid: str) -> int:  # type: ignore[no-untyped-def]
    token = unsubscribe_token(platform, pid, ANNA_EMAIL)
    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "ru"})
    return r.status_code


async def _centre_email_off(client, keys, platform, pid: str) -> int:  # type: ignore[no-untyped-def]
    token = unsubscribe_token(platform, pid, ANNA_EMAIL)
    shown = ["marketing:email", "marketing:sms", "marketing:push"]
    form = {"lang": "en", "shown": shown, "allow": ["marketing:sms", "marketing:push"]}
    r = await client.post(f"/preferences/{token}", data=form)
    return r.status_code


# entry point, its answer, the channels that stop
SCOPES = {
    "one-click": (_one_click, 200, {"email"}),
    "sms stop": (_sms_stop, 200, {"sms"}),
    "api stop all": (_api_stop_all, 200, {"email", "sms", "push"}),
    "centre stop all": (_centre_stop_all, 303, {"email", "sms", "push"}),
    "centre email off": (_centre_email_off, 303, {"email"}),
}


@pytest.mark.parametrize("way", sorted(SCOPES))
async def test_each_way_to_stop_is_honoured_at_once_as_far_as_its_scope_and_harmless_twice(
    client, keys, platform, way
):
    stop, status, stopped = SCOPES[way]
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": ANNA_EMAIL,
            "phone": ANNA_PHONE,
            "country": "RU",
            "consents": [dated(c, days=1) for c in ("email", "sms", "push")],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    for channel in ("email", "sms", "push"):
        assert pid in await members(client, keys, channel)
    events = await count(platform, outbox_events)
    assert await stop(client, keys, platform, pid) == status
    assert await count(platform, outbox_events) > events  # the sending tools are told
    for _ in range(2):  # at once, and a repeat changes nothing
        for channel in ("email", "sms", "push"):
            assert (pid in await members(client, keys, channel)) is (channel not in stopped), (
                channel
            )
        assert await stop(client, keys, platform, pid) == status
    await audit_ok(client, keys)


async def test_nothing_the_customer_does_from_their_links_puts_their_data_in_the_logs(
    client, keys, platform, caplog
):
    from tests.test_pii_in_errors import everything_said

    email, phone, name = "svetlana.logs@example.com", "+79161237788", "Светлана"
    with everything_said(caplog) as said:
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": email,
                "phone": phone,
                "first_name": name,
                "country": "RU",
                "consents": [dated("email", days=1), dated("sms", days=1)],
            },
            headers=keys["ingest"],
        )
        pid = r.json()["profile_id"]
        unsub = unsubscribe_token(platform, pid, email)
        link = await client.post(
            "/v1/preference-links", json={"email": email}, headers=keys["ingest"]
        )
        manage = link.json()["token"]
        for token in (unsub, manage, unsub[:-3]):
            await client.get(f"/v1/unsubscribe/{token}", headers={"Accept": BROWSER})
            await client.get(f"/preferences/{token}")
        await client.post(f"/preferences/{manage}", data={"shown": ["marketing:email"]})
        await client.post(f"/preferences/{unsub}/access")
        assert (await client.post(f"/preferences/{manage}/access")).status_code == 200
        await client.post(f"/v1/unsubscribe/{unsub}", headers={"Accept": BROWSER})
        await client.post(f"/v1/unsubscribe/{unsub}")
        await client.post(
            "/v1/inbound/sms", json={"from": phone, "text": "STOP"}, headers=keys["ingest"]
        )
        await client.post(f"/preferences/{manage}/opt-out")
        erase = await client.post(f"/preferences/{manage}/erasure", data={"confirm": "yes"})
        assert erase.status_code == 202
        await run_pending(platform)
        await client.get(f"/preferences/{manage}")
    secrets = [email, phone, phone.lstrip("+"), name, unsub, manage]
    assert said
    assert not [line for line in said for s in secrets if s in line]


async def test_after_an_unmerge_the_link_in_a_message_acts_for_whoever_holds_its_address(
    client, keys, platform
):
    """A message went to x@ while her profile was wrongly merged with another customer's; the
    merge was undone. Her link must show and change her own preferences, not the other
    customer's: "unsubscribe from everything" used to stop his messages and not hers."""
    a = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "phone": "+79161110001",
            "country": "RU",
            "consents": [dated("sms", days=3)],
        },
        headers=keys["ingest"],
    )
    c = await client.post(
        "/v1/profiles",
        json={
            "source": "web",
            "email": "x.unmerged@example.com",
            "country": "RU",
            "consents": [dated("email", days=3)],
        },
        headers=keys["ingest"],
    )
    other, her = a.json()["profile_id"], c.json()["profile_id"]
    bridge = await client.post(
        "/v1/profiles",
        json={"source": "shop", "phone": "+79161110001", "email": "x.unmerged@example.com"},
        headers=keys["ingest"],
    )
    assert bridge.json()["merged_profile_ids"] == [her]
    token = unsubscribe_token(platform, other, "x.unmerged@example.com")  # as members carried
    undone = await client.post(f"/v1/profiles/{other}/unmerge", headers=keys["admin"])
    assert undone.status_code == 200, undone.text

    page = await client.get(f"/preferences/{token}", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    assert "x***@example.com" in page.text and "+7********01" not in page.text
    done = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert done.status_code == 303
    assert not any((await contactable(client, keys, her)).values())
    assert (await contactable(client, keys, other))["sms"] is True

    # his erasure, after she got her address back, leaves her link hers
    erased = await client.post(
        "/v1/erasure-requests",
        json={"phone": "+79161110001", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert erased.status_code == 202, erased.text
    await run_pending(platform)
    page = await client.get(f"/preferences/{token}", headers={"Accept-Language": "en"})
    assert page.status_code == 200 and "x***@example.com" in page.text


async def test_the_links_of_an_erased_customer_do_not_act_for_the_next_holder_of_the_address(
    client, keys, platform
):
    """Anna was erased; her phone number went to Boris, a new customer. The links she had been
    sent (an SMS's unsubscribe link, a manage link still in its week) used to act for whoever
    held the number: they showed Boris's preferences with his masked email, downloaded his data
    and asked for his erasure. They are hers, issued before her erasure: a page saying her data
    is gone. Boris's own link works."""
    phone = "+79161115566"
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "phone": phone, "country": "RU", "consents": [dated("sms", days=3)]},
        headers=keys["ingest"],
    )
    anna = uuid.UUID(r.json()["profile_id"])
    claims = TokenClaims(anna, "phone", platform.keys.indexer.phone(phone), "marketing", "sms")
    unsubscribe = issue(platform.keys.token_key, claims)
    link = await client.post(
        "/v1/preference-links",
        json={"phone": phone, "valid_minutes": 10080},
        headers=keys["ingest"],
    )
    manage = link.json()["token"]
    erased = await client.post(
        "/v1/erasure-requests",
        json={"phone": phone, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert erased.status_code == 202, erased.text
    await run_pending(platform)
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "shop",
            "phone": phone,
            "email": "boris.next@example.org",
            "first_name": "Boris",
            "country": "RU",
            "consents": [dated("sms", days=0)],
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    boris = r.json()["profile_id"]

    en = {"Accept-Language": "en", "Accept": BROWSER}
    for token in (unsubscribe, manage):
        page = await client.get(f"/preferences/{token}", headers=en)
        assert page.status_code == 410 and "b***@example.org" not in page.text
        r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
        assert r.status_code == 410
    r = await client.post(f"/preferences/{manage}/access", data={"lang": "en"})
    assert r.status_code == 410 and "Boris" not in r.text and "boris" not in r.text
    r = await client.post(f"/preferences/{manage}/erasure", data={"confirm": "yes"})
    assert r.status_code == 410
    r = await client.post(f"/v1/erasure-requests/by-token/{manage}")
    assert r.status_code == 410
    listed = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    assert [i["profile_id"] for i in listed.json()["items"]] == [str(anna)]
    assert (await contactable(client, keys, boris))["sms"] is True

    link = await client.post("/v1/preference-links", json={"phone": phone}, headers=keys["ingest"])
    page = await client.get(f"/preferences/{link.json()['token']}", headers=en)
    assert page.status_code == 200 and "b***@example.org" in page.text


async def test_an_expired_manage_link_still_turns_messages_off_and_does_nothing_else(
    client, keys, platform
):
    """A customer who took longer than the link's hour (or came back to it days later) and
    pressed "unsubscribe from everything" got "this link has expired" and stayed subscribed:
    the opt-out they asked for was lost. An expired manage link now works as the unsubscribe
    link in every message does: it shows the centre (addresses masked) and turns messages off;
    turning them on, a data download and erasure still need a new link."""
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "late@example.com",
            "phone": "+79161234567",
            "country": "RU",
            "consents": [dated("email", days=3)],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    claims = TokenClaims(
        uuid.UUID(pid),
        "email",
        platform.keys.indexer.email("late@example.com"),
        "marketing",
        "*",
        scope="manage",
        expires_at=int(utcnow().timestamp()) - 60,
    )
    token = issue(platform.keys.token_key, claims)
    for lang, words in (
        ("ru", "по ней теперь можно только отключить сообщения"),
        ("en", "it can now only turn messages off"),
    ):
        page = await client.get(f"/preferences/{token}", headers={"Accept-Language": lang})
        assert page.status_code == 200 and words in page.text
        assert "late@" not in page.text and "l***@example.com" in page.text
        assert f"/preferences/{token}/access" not in page.text  # no download or erasure forms
        assert f"/preferences/{token}/erasure" not in page.text

    before = await count(platform, consent_ledger)
    both = ["marketing:email", "marketing:sms"]
    turn_on = {"shown": both, "allow": both, "lang": "en"}  # sms was off: turned on
    r = await client.post(f"/preferences/{token}", data=turn_on)
    assert r.status_code == 303 and "done=grants_refused" in r.headers["location"]
    assert await count(platform, consent_ledger) == before  # sms stays off: nothing granted
    page = await client.get(r.headers["location"], headers={"Accept-Language": "en"})
    assert "To turn messages on, sign in to your account" in page.text

    for path in ("/access", "/erasure"):
        r = await client.post(f"/preferences/{token}{path}", data={"confirm": "yes"})
        assert r.status_code == 404 and "This link has expired" in r.text, path
    assert await count(platform, consent_ledger) == before
    listed = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    assert listed.status_code == 200 and listed.json()["items"] == []

    assert (await contactable(client, keys, pid))["email"] is True
    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303 and "done=opted_out" in r.headers["location"]
    assert not any((await contactable(client, keys, pid)).values())
    await audit_ok(client, keys)


def test_stop_replies_in_either_language_whatever_the_case_spacing_or_punctuation():
    from consent.optout import is_stop_message

    for text in (
        "STOP", "stop", " Stop. ", "stop!", "Stop\n", "СТОП", "стоп", "Стоп!!!", "«Стоп»",
        "СТОП\u00a0", "ОТПИСКА.", "отписка", "Отписаться от рассылки", "Unsubscribe me",
    ):  # fmt: skip
        assert is_stop_message(text), text
    for text in ("не стоп", "where is my order", "stopwatch", "когда придёт заказ?"):
        assert not is_stop_message(text), text


async def test_a_stop_from_a_number_never_seen_outlives_any_later_import_of_it(client, keys):
    r = await client.post(
        "/v1/inbound/sms", json={"from": "+7 916 555-00-11", "text": "стоп"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    assert r.json() == {"stop": True, "profile_ids": [], "suppressed": True}
    for consent in (dated("sms", days=2), undated("sms")):
        back = await client.post(
            "/v1/profiles",
            json={"source": "crm", "phone": "89165550011", "country": "RU", "consents": [consent]},
            headers=keys["ingest"],
        )
        assert back.status_code in (200, 201), back.text
        pid = back.json()["profile_id"]
        assert (await contactable(client, keys, pid))["sms"] is False
        assert pid not in await members(client, keys, "sms")
    await audit_ok(client, keys)


async def test_a_russian_customer_replying_unsubscribe_me_is_opted_out(client, keys):
    """ "Отпишите меня" (unsubscribe me) and "Отписать" are how people write it; only the noun
    (ОТПИСКА) and the reflexive verb (ОТПИСАТЬСЯ) were stop words. Full-width letters, which
    some keyboards produce, are the same words (NFKC)."""
    from consent.optout import is_stop_message

    for text in ("Отпишите меня", "отпишите!", "ОТПИСАТЬ", "Отписать меня", "ＳＴＯＰ"):
        assert is_stop_message(text), text
    phone = "+79165550022"
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "phone": phone, "country": "RU", "consents": [dated("sms", days=1)]},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    r = await client.post(
        "/v1/inbound/sms",
        json={"from": phone, "text": "Отпишите меня, пожалуйста"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200 and r.json()["stop"] is True, r.text
    assert (await contactable(client, keys, pid))["sms"] is False


async def test_a_token_altered_truncated_moved_or_from_another_deployment_is_refused_quietly(
    client, keys, platform
):
    import os

    from consent.outbox.tables import outbox_events as outbox
    from consent.tables import suppressions

    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "quiet@example.com",
            "first_name": "Тихон",
            "country": "RU",
            "consents": [dated("email", days=1)],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    good = unsubscribe_token(platform, pid, "quiet@example.com")
    body, tag = good.split(".")
    moved = (
        issue(  # the same claims for another address, with the genuine tag
            platform.keys.token_key,
            TokenClaims(
                uuid.UUID(pid),
                "email",
                platform.keys.indexer.email("other@example.com"),
                "marketing",
                "email",
            ),
        ).split(".")[0]
        + "."
        + tag
    )
    foreign = issue(  # another deployment's key
        os.urandom(32),
        TokenClaims(
            uuid.UUID(pid),
            "email",
            platform.keys.indexer.email("quiet@example.com"),
            "marketing",
            "email",
        ),
    )
    bad = [good[:-1], good[:20], body, f"{body}.", f"{body}.{tag}=", moved, foreign, "x" * 300]
    tables = (consent_ledger, suppressions, outbox)
    before = [await count(platform, t) for t in tables]
    for token in bad:
        for method, path, accept in (
            ("GET", f"/v1/unsubscribe/{token}", BROWSER),
            ("POST", f"/v1/unsubscribe/{token}", BROWSER),
            ("POST", f"/v1/unsubscribe/{token}", "application/json"),
            ("GET", f"/preferences/{token}", BROWSER),
            ("POST", f"/preferences/{token}", BROWSER),
            ("POST", f"/preferences/{token}/opt-out", BROWSER),
            ("POST", f"/preferences/{token}/erasure", BROWSER),
            ("POST", f"/v1/erasure-requests/by-token/{token}", "application/json"),
        ):
            r = await client.request(
                method, path, headers={"Accept": accept}, data={"confirm": "yes"}
            )
            assert r.status_code in (400, 404), (token, method, path, r.status_code)
            for secret in ("quiet@", "q***@", "Тихон", pid):
                assert secret not in r.text, (token, path)
    assert [await count(platform, t) for t in tables] == before
    assert (await contactable(client, keys, pid))["email"] is True


async def test_stopping_push_or_messenger_named_by_an_address_never_seen_holds_after_its_import(
    client, keys, platform
):
    """The app relays "no more notifications" for its user's email before the CRM knows her:
    the opt-out stored nothing ("suppressed": false), and importing her with the grant she had
    given earlier made her contactable by push again."""
    from consent.outbox.tables import outbox_events as outbox

    events = await count(platform, outbox)
    for body in (
        {"email": "app.user@example.com", "channel": "push", "source": "app"},
        {"phone": "+79160001122", "channel": "messenger", "source": "bot"},
    ):
        r = await client.post("/v1/opt-outs", json=body, headers=keys["ingest"])
        assert r.status_code == 200 and r.json() == {"profile_ids": [], "suppressed": True}
    assert await count(platform, outbox) > events  # the sending tools are told
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "app.user@example.com",
            "phone": "+79160001122",
            "country": "RU",
            "consents": [dated(c, days=2) for c in ("email", "push", "messenger")],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    assert await contactable(client, keys, pid) == {
        "email": True, "sms": False, "phone": False, "push": False, "messenger": False
    }  # fmt: skip
    assert pid not in await members(client, keys, "push")
    assert pid not in await members(client, keys, "messenger")
    assert pid in await members(client, keys, "email")  # the opt-out's scope: push only
    # a grant she gives afterwards counts
    again = await client.post(
        "/v1/consents",
        json={
            "email": "app.user@example.com",
            "purpose": "marketing",
            "channel": "push",
            "status": "granted",
            "source": "app",
            "evidence": UNDATED,
        },
        headers=keys["ingest"],
    )
    assert again.status_code == 201, again.text
    assert pid in await members(client, keys, "push")
    await audit_ok(client, keys)


async def test_a_stop_from_a_number_two_customers_gave_reaches_no_one_by_sms(client, keys):
    """A family phone: two CRM customers (two external ids of one source, so the guards keep
    them apart) gave the same number. Whoever replies STOP, the number gets no more ads."""
    pids = []
    for ext, email in (("F-1", "mother@example.com"), ("F-2", "son@example.com")):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "external_id": ext,
                "email": email,
                "country": "RU",
                "consents": [dated("email", days=1)],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        pids.append(r.json()["profile_id"])
    for ext in ("F-1", "F-2"):  # both give the family phone; the second link is refused
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "external_id": ext,
                "phone": "+79165557788",
                "consents": [dated("sms", days=1)],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 200, r.text
    held = [await client.get(f"/v1/profiles/{pid}", headers=keys["admin"]) for pid in pids]
    assert [sum(i["kind"] == "phone" for i in h.json()["identities"]) for h in held] == [1, 0]
    assert (await members(client, keys, "sms")) & set(pids)
    r = await client.post(
        "/v1/inbound/sms", json={"from": "+79165557788", "text": "STOP"}, headers=keys["ingest"]
    )
    assert r.status_code == 200 and r.json()["stop"] is True
    assert not (await members(client, keys, "sms")) & set(pids)
    assert set(pids) <= await members(client, keys, "email")  # only sms stops
    await audit_ok(client, keys)


async def test_the_link_in_an_app_notification_of_a_forgotten_customer_answers_with_a_page(
    client, keys, platform
):
    """A push notification's unsubscribe link names the profile. Pressed in a browser after the
    customer was erased, it answered a JSON problem; it is a page saying the data is gone."""
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "app",
            "email": "pushed@example.com",
            "country": "RU",
            "consents": [dated("push", days=1)],
        },
        headers=keys["ingest"],
    )
    pid = uuid.UUID(r.json()["profile_id"])
    claims = TokenClaims(pid, "profile", profile_subject(pid), "marketing", "push")
    token = issue(platform.keys.token_key, claims)
    page = await client.get(f"/v1/unsubscribe/{token}", headers={"Accept": BROWSER})
    assert page.status_code == 200 and "Уведомления в приложении" in page.text
    erased = await client.post(
        "/v1/erasure-requests",
        json={"email": "pushed@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert erased.status_code == 202, erased.text
    await run_pending(platform)
    done = await client.post(
        f"/v1/unsubscribe/{token}",
        data={"List-Unsubscribe": "One-Click"},
        headers={"Accept": BROWSER, "Accept-Language": "ru"},
    )
    assert done.status_code == 410 and done.headers["content-type"].startswith("text/html")
    assert "Ваши данные удалены" in done.text
    mail_client = await client.post(f"/v1/unsubscribe/{token}")
    assert mail_client.status_code == 410
    assert mail_client.headers["content-type"] == "application/problem+json"


async def test_an_opt_out_naming_an_external_id_nobody_has_is_404_not_a_silent_200(
    client, keys, platform
):
    """The call centre relays "customer C-9 says stop" before the CRM has synced C-9: the
    answer was 200 with nothing stored, and C-9's import then made them contactable. An
    external id is not an address that could be suppressed: an unknown one is 404, as an
    unknown profile id is, so the tool knows to try again."""
    before = await count(platform, consent_ledger)
    r = await client.post(
        "/v1/opt-outs",
        json={"external_id": "C-9", "id_source": "crm", "source": "callcenter"},
        headers=keys["ingest"],
    )
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json" and "C-9" not in r.text
    assert await count(platform, consent_ledger) == before
    known = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "C-9", "email": "c9@example.com", "country": "RU"},
        headers=keys["ingest"],
    )
    r = await client.post(
        "/v1/opt-outs",
        json={"external_id": "C-9", "id_source": "crm", "source": "callcenter"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"profile_ids": [known.json()["profile_id"]], "suppressed": True}
