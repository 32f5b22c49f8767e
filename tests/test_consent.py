"""Consent per purpose, channel and address; opt-outs from every entry point."""

from __future__ import annotations

import asyncio

from consent.tables import consent_ledger, suppressions
from tests.helpers import count, padding_twin

GRANT = {
    "wording_id": "newsletter-v3",
    "method": "double_opt_in",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
}


async def contactable(client, keys, email=None, phone=None):  # type: ignore[no-untyped-def]
    q = f"email={email}" if email else f"phone={phone}"
    profile = (await client.get(f"/v1/profiles?{q}", headers=keys["admin"])).json()
    r = await client.get(f"/v1/profiles/{profile['profile_id']}/consents", headers=keys["admin"])
    assert r.status_code == 200
    return r.json()["contactable"]


async def consent(client, keys, **body):  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/consents", json={"source": "web_form", **body}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_ru_service_only_customer(client, keys):
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "ru@example.com", "phone": "+79161234567", "country": "RU"},
        headers=keys["ingest"],
    )
    m = await contactable(client, keys, email="ru@example.com")
    assert m["service"]["sms"] is True and m["service"]["email"] is True
    assert m["marketing"]["sms"] is False and m["marketing"]["email"] is False


async def test_us_email_is_opt_out_and_sms_is_opt_in(client, keys):
    await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "us@example.com",
            "phone": "+14155550100",
            "jurisdiction": "US-CA",
        },
        headers=keys["ingest"],
    )
    m = await contactable(client, keys, email="us@example.com")
    assert m["marketing"]["email"] is True
    assert m["marketing"]["sms"] is False
    await consent(
        client,
        keys,
        email="us@example.com",
        purpose="marketing",
        channel="email",
        status="withdrawn",
    )
    assert (await contactable(client, keys, email="us@example.com"))["marketing"]["email"] is False
    await consent(
        client,
        keys,
        phone="+14155550100",
        country="US",
        purpose="marketing",
        channel="sms",
        status="granted",
        evidence={"wording_id": "tcpa-v1", "method": "checkbox"},
    )
    assert (await contactable(client, keys, email="us@example.com"))["marketing"]["sms"] is True


async def test_dont_call_me_removes_only_phone(client, keys):
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "c@example.com", "phone": "+79161230000"},
        headers=keys["ingest"],
    )
    await consent(
        client, keys, email="c@example.com", purpose="service", channel="phone", status="withdrawn"
    )
    m = await contactable(client, keys, email="c@example.com")
    assert m["service"] == {
        "email": True,
        "sms": True,
        "phone": False,
        "push": True,
        "messenger": True,
    }


async def test_consent_belongs_to_the_address(client, keys):
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "first@example.com", "external_id": "K1"},
        headers=keys["ingest"],
    )
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "second@example.com", "external_id": "K1"},
        headers=keys["ingest"],
    )
    await consent(
        client,
        keys,
        email="second@example.com",
        purpose="marketing",
        channel="email",
        status="granted",
        evidence=GRANT,
    )
    pid = r.json()["profile_id"]
    view = (await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])).json()
    granted = [i for i in view["items"] if i["purpose"] == "marketing"]
    assert [(i["address"], i["status"]) for i in granted] == [("second@example.com", "granted")]
    assert view["contactable"]["marketing"]["email"] is True
    # naming the profile only withdraws every address it has on the channel
    await consent(
        client, keys, profile_id=pid, purpose="marketing", channel="email", status="withdrawn"
    )
    assert (await contactable(client, keys, email="first@example.com"))["marketing"][
        "email"
    ] is False


async def test_an_older_event_is_kept_but_not_effective(client, keys, platform):
    await client.post(
        "/v1/profiles", json={"source": "crm", "email": "o@example.com"}, headers=keys["ingest"]
    )
    new = await consent(
        client,
        keys,
        email="o@example.com",
        purpose="marketing",
        channel="email",
        status="withdrawn",
        occurred_at="2026-11-20T09:00:00Z",
    )
    old = await consent(
        client,
        keys,
        email="o@example.com",
        purpose="marketing",
        channel="email",
        status="granted",
        occurred_at="2026-11-19T09:00:00Z",
        evidence=GRANT,
    )
    assert new["effective"] is True and old["effective"] is False
    assert old["seq"] == new["seq"] + 1
    assert await count(platform, consent_ledger) == 2
    assert (await contactable(client, keys, email="o@example.com"))["marketing"]["email"] is False


async def test_policy_violations_are_400(client, keys, platform):
    cases = [
        ({"purpose": "marketing", "channel": "email", "status": "granted"}, "evidence.wording_id"),
        (
            {
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "evidence": {"wording_id": "  ", "method": "checkbox"},
            },
            "evidence.wording_id",
        ),
        (  # a grant without its method is not a grant (POLICIES.md: the burden of proof)
            {
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "evidence": {"wording_id": "newsletter-v3"},
            },
            "evidence.method",
        ),
        (  # US federal: automated service SMS needs prior consent, so its grant needs proof
            {"purpose": "service", "channel": "sms", "status": "granted"},
            "evidence.wording_id",
        ),
        ({"purpose": "lottery", "channel": "email", "status": "granted"}, "purpose"),
        ({"purpose": "service", "channel": "fax", "status": "granted"}, "channel"),
        ({"purpose": "service", "channel": "*", "status": "granted"}, "channel"),
        ({"purpose": "service", "channel": "email", "status": "maybe"}, "status"),
    ]
    for body, field in cases:
        r = await client.post(
            "/v1/consents",
            json={"email": "p@example.com", "source": "x", **body},
            headers=keys["ingest"],
        )
        assert r.status_code == 400, r.text
        assert field in [e["field"] for e in r.json()["errors"]]
    assert await count(platform, consent_ledger) == 0


async def test_opt_out_of_unknown_address_survives_an_older_import(client, keys, platform):
    r = await client.post(
        "/v1/opt-outs", json={"email": "ghost@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    assert r.json() == {"profile_ids": [], "suppressed": True}
    again = await client.post(
        "/v1/opt-outs", json={"email": "ghost@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert again.status_code == 200
    assert await count(platform, suppressions) == 1
    stale = {
        "source": "old_crm",
        "email": "ghost@example.com",
        "consents": [
            {
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "occurred_at": "2025-01-01T00:00:00Z",
                "evidence": GRANT,
            }
        ],
    }
    assert (
        await client.post("/v1/profiles", json=stale, headers=keys["ingest"])
    ).status_code == 201
    assert (await contactable(client, keys, email="ghost@example.com"))["marketing"][
        "email"
    ] is False
    await consent(
        client,
        keys,
        email="ghost@example.com",
        purpose="marketing",
        channel="email",
        status="granted",
        evidence=GRANT,
    )  # occurred now: after the opt-out
    assert (await contactable(client, keys, email="ghost@example.com"))["marketing"][
        "email"
    ] is True


async def test_unsubscribe_tokens(client, keys, platform):
    from consent.tokens import TokenClaims, issue

    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "u@example.com",
            "consents": [
                {"purpose": "marketing", "channel": "email", "status": "granted", "evidence": GRANT}
            ],
        },
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    import uuid

    token = issue(
        platform.keys.token_key,
        TokenClaims(
            uuid.UUID(pid),
            "email",
            platform.keys.indexer.email("u@example.com"),
            "marketing",
            "email",
        ),
    )
    ledger_before = await count(platform, consent_ledger)
    page = await client.get(f"/v1/unsubscribe/{token}")
    assert page.status_code == 200 and "<form" in page.text
    # a page carrying the token: not framed (the button), not cached, no Referer
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert (await client.post(f"/v1/unsubscribe/{forged}")).status_code in (400, 404)
    assert (await client.post("/v1/unsubscribe/garbage")).status_code in (400, 404)
    body, tag = token.split(".")
    for altered in (f"{body}.{padding_twin(tag)}", f"{padding_twin(body)}.{tag}"):
        # the same bytes once decoded leniently, but not the token that was sent
        assert (await client.post(f"/v1/unsubscribe/{altered}")).status_code in (400, 404)
    assert await count(platform, consent_ledger) == ledger_before  # GET and forgeries: nothing
    assert (await contactable(client, keys, email="u@example.com"))["marketing"]["email"] is True
    one_click = await client.post(
        f"/v1/unsubscribe/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert (await contactable(client, keys, email="u@example.com"))["marketing"]["email"] is False


async def test_inbound_sms_stop_keywords(client, keys):
    for i, text in enumerate(["STOP", "  stop ", "Стоп", "ОТПИСКА", "unsubscribe"]):
        phone = f"+7916700000{i}"
        await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "phone": phone,
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "sms",
                        "status": "granted",
                        "evidence": GRANT,
                    }
                ],
            },
            headers=keys["ingest"],
        )
        assert (await contactable(client, keys, phone=phone))["marketing"]["sms"] is True
        r = await client.post(
            "/v1/inbound/sms", json={"from": phone, "text": text}, headers=keys["ingest"]
        )
        assert r.status_code == 200 and r.json()["stop"] is True, text
        assert (await contactable(client, keys, phone=phone))["marketing"]["sms"] is False, text
    chat = await client.post(
        "/v1/inbound/sms",
        json={"from": "+79167000000", "text": "where is my order?"},
        headers=keys["ingest"],
    )
    assert chat.json()["stop"] is False


async def test_inbound_sms_fcc_revocation_words_opt_out(client, keys):
    """FCC 24-24 lists stop, quit, end, revoke, opt out, cancel and unsubscribe."""
    replies = ["REVOKE", "OPT OUT", "Opt-out please", "optout", "STOP ALL", "Quit", "отписаться"]
    for i, text in enumerate(replies):
        phone = f"+7916710000{i}"
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "phone": phone,
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "sms",
                        "status": "granted",
                        "evidence": GRANT,
                    }
                ],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/inbound/sms", json={"from": phone, "text": text}, headers=keys["ingest"]
        )
        assert r.status_code == 200 and r.json()["stop"] is True, text
        assert (await contactable(client, keys, phone=phone))["marketing"]["sms"] is False, text
    for text in ("I want to opt in", "out of stock?", "when does the sale end"):
        r = await client.post(
            "/v1/inbound/sms", json={"from": "+79167100009", "text": text}, headers=keys["ingest"]
        )
        assert r.json()["stop"] is False, text


async def test_concurrent_opt_outs_and_ingests_lose_nothing(client, keys):
    emails = [f"race{i}@example.com" for i in range(100)]
    stale = [
        {
            "source": "crm",
            "email": e,
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "evidence": GRANT,
                }
            ],
        }
        for e in emails
    ]

    async def ingest(body):  # type: ignore[no-untyped-def]
        r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
        assert r.status_code in (200, 201), r.text

    async def opt_out(email):  # type: ignore[no-untyped-def]
        r = await client.post(
            "/v1/opt-outs", json={"email": email, "source": "esp"}, headers=keys["ingest"]
        )
        assert r.status_code == 200, r.text

    tasks = []
    for body, email in zip(stale, emails, strict=True):
        tasks += [ingest(body), opt_out(email), ingest(body)]
    await asyncio.gather(*tasks)
    for email in emails:
        assert (await contactable(client, keys, email=email))["marketing"]["email"] is False


async def test_a_grant_dated_in_the_future_never_outranks_a_later_opt_out(client, keys):
    """Opt-out wins: a grant is ordered by when it was recorded if its own date is later. A
    grant dated 2099 outranked every opt-out until then, and the customer stayed contactable
    after opting out; such dates are now refused, and one within the clock-skew allowance is
    ordered as recorded."""
    from datetime import UTC, datetime, timedelta

    email = "future@example.com"
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": email, "country": "RU"},
        headers=keys["ingest"],
    )
    far = {"email": email, "purpose": "marketing", "channel": "email", "status": "granted"}
    r = await client.post(
        "/v1/consents",
        json={
            "source": "web_form",
            "occurred_at": "2099-01-01T00:00:00Z",
            "evidence": GRANT,
            **far,
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "occurred_at"
    claim = {k: v for k, v in far.items() if k != "email"}
    record = {"source": "crm", "email": email, "consents": [{**claim, "evidence": GRANT}]}
    record["consents"][0]["occurred_at"] = "2099-01-01T00:00:00Z"
    r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "consents[0].occurred_at"
    r = await client.post(
        "/v1/opt-outs",
        json={"email": email, "source": "crm", "occurred_at": "2099-01-01T00:00:00Z"},
        headers=keys["ingest"],
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "occurred_at"

    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()  # a clock a little ahead
    await consent(client, keys, occurred_at=soon, evidence=GRANT, **far)
    assert (await contactable(client, keys, email=email))["marketing"]["email"] is True
    r = await client.post(
        "/v1/opt-outs", json={"email": email, "source": "crm"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    assert (await contactable(client, keys, email=email))["marketing"]["email"] is False


async def test_an_opt_out_dated_a_little_ahead_does_not_outrank_the_grant_made_after_it(
    client, keys
):
    """An opt-out from a sender whose clock runs ahead (within the allowance) is ordered as
    recorded, as a grant is. Its suppression kept the reported time, later than the ledger's,
    so a customer who opted out and granted again a minute later showed 'granted' yet stayed
    'suppressed' for good (until a grant after the sender's time). Only the gap between the two
    requests matters, so the test is not timed (the servers' clock is read once, here)."""
    from datetime import UTC, datetime, timedelta

    email = "ahead@example.com"
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": email, "country": "RU"},
        headers=keys["ingest"],
    )
    grant = {"email": email, "purpose": "marketing", "channel": "email", "status": "granted"}
    await consent(client, keys, evidence=GRANT, **grant)
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()  # a clock a little ahead
    r = await client.post(
        "/v1/opt-outs",
        json={"email": email, "source": "esp", "occurred_at": soon},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, email=email))["marketing"]["email"] is False
    await consent(client, keys, evidence=GRANT, **grant)  # the customer changes their mind
    assert (await contactable(client, keys, email=email))["marketing"]["email"] is True
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text


async def test_sms_stop_revokes_the_consent_that_automated_service_texts_need(client, keys):
    """US federal: automated service SMS needs prior consent (TCPA), and a STOP reply revokes it
    (FCC 24-24), so order texts stop too. In RU service SMS rests on the contract and STOP
    stops advertising by sms only."""
    for n, jurisdiction in enumerate(["US", "RU"]):
        phone = f"+7916720000{n}"
        grants = [
            {"purpose": purpose, "channel": "sms", "status": "granted", "evidence": GRANT}
            for purpose in ("service", "marketing")
        ]
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "phone": phone,
                "jurisdiction": jurisdiction,
                "consents": grants,
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        before = await contactable(client, keys, phone=phone)
        assert before["service"]["sms"] is True and before["marketing"]["sms"] is True
        r = await client.post(
            "/v1/inbound/sms", json={"from": phone, "text": "STOP"}, headers=keys["ingest"]
        )
        assert r.status_code == 200 and r.json()["stop"] is True
        after = await contactable(client, keys, phone=phone)
        assert after["marketing"]["sms"] is False, jurisdiction
        assert after["service"]["sms"] is (jurisdiction == "RU"), jurisdiction


def test_what_a_stop_reply_withdraws_follows_the_senders_jurisdiction():
    from cdp.settings import DEFAULT_POLICY_DIR
    from consent.optout import stop_purposes
    from consent.policy import load_policy

    policy = load_policy(DEFAULT_POLICY_DIR)
    assert stop_purposes(policy, "US") == ["service", "marketing"]
    assert stop_purposes(policy, "RU") == ["marketing"]
    assert stop_purposes(policy, "EU") == ["marketing"]
    assert stop_purposes(policy, None) == ["service", "marketing"]  # unknown number: fail closed


async def test_the_unsubscribe_button_answers_the_customer_with_a_page_in_their_language(
    platform, client, keys
):
    """The confirmation page's button posts its form from the customer's browser, which then
    showed them `{"unsubscribed":true,"suppressed":true}`. A browser (it asks for HTML) gets a
    page saying it is done, in its language; a mail client's RFC 8058 post still gets JSON."""
    import uuid

    from consent.tokens import TokenClaims, issue

    for n, email in enumerate(("ru@example.com", "mail@example.com")):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": email,
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "email",
                        "status": "granted",
                        "evidence": GRANT,
                    }
                ],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, (n, r.text)
    tokens = {
        email: issue(
            platform.keys.token_key,
            TokenClaims(
                uuid.UUID(
                    (await client.get(f"/v1/profiles?email={email}", headers=keys["admin"])).json()[
                        "profile_id"
                    ]
                ),
                "email",
                platform.keys.indexer.email(email),
                "marketing",
                "email",
            ),
        )
        for email in ("ru@example.com", "mail@example.com")
    }
    form = {"content-type": "application/x-www-form-urlencoded"}
    browser = {
        **form,
        "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "accept-language": "ru-RU,ru;q=0.9,en;q=0.8",
    }
    page = await client.post(
        f"/v1/unsubscribe/{tokens['ru@example.com']}",
        content="List-Unsubscribe=One-Click",
        headers=browser,
    )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Вы отписались" in page.text and "Электронная почта" in page.text
    assert "ru@example.com" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert (await contactable(client, keys, email="ru@example.com"))["marketing"]["email"] is False
    mail_client = await client.post(
        f"/v1/unsubscribe/{tokens['mail@example.com']}",
        content="List-Unsubscribe=One-Click",
        headers=form,
    )
    assert mail_client.status_code == 200
    assert mail_client.json() == {"unsubscribed": True, "suppressed": True}
    assert (await contactable(client, keys, email="mail@example.com"))["marketing"][
        "email"
    ] is False


async def test_the_unsubscribe_confirmation_page_speaks_the_customers_language(
    platform, client, keys
):
    """The first users' customers are in Russia; the page asked 'Stop marketing messages by
    email?' in English whatever the browser asked for, unlike the preference centre."""
    import uuid

    from consent.tokens import TokenClaims, issue

    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "lang@example.com"}, headers=keys["ingest"]
    )
    token = issue(
        platform.keys.token_key,
        TokenClaims(
            uuid.UUID(r.json()["profile_id"]),
            "email",
            platform.keys.indexer.email("lang@example.com"),
            "marketing",
            "email",
        ),
    )
    ru = await client.get(f"/v1/unsubscribe/{token}", headers={"accept-language": "ru,en;q=0.5"})
    assert ru.status_code == 200
    assert '<html lang="ru">' in ru.text
    assert "Реклама и предложения" in ru.text and "Электронная почта" in ru.text
    assert "Отписаться" in ru.text and "<form" in ru.text
    en = await client.get(f"/v1/unsubscribe/{token}", headers={"accept-language": "en-GB"})
    assert '<html lang="en">' in en.text and "Unsubscribe" in en.text
