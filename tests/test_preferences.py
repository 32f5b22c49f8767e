"""The customer preference centre over HTTP (both backends), and its plain rules."""

from __future__ import annotations

import re
import uuid

import pytest

from api.controllers.preferences import (
    Choice,
    Group,
    build_groups,
    plan_changes,
    wording_id,
)
from api.i18n import CATALOGS, STYLESHEET, choose_language
from cdp.profiles.identifiers import Identifier
from cdp.settings import DEFAULT_POLICY_DIR
from consent.dsr.requests import submit_erasure
from consent.masking import mask_email, mask_phone
from consent.policy import load_policy
from consent.tables import consent_ledger
from consent.tokens import TokenClaims, TokenError, issue, verify
from tests.helpers import count

GRANT = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
RU_EN = {"Accept-Language": "en-GB,en;q=0.9"}


async def customer(  # type: ignore[no-untyped-def]
    client, keys, platform, email, *, jurisdiction="RU", grant=True, manage=False, **extra
):
    """A profile, its id and a preference token for its email: the unsubscribe token segment
    members carry, or (`manage`) a manage link's, as the operator's site would ask for one."""
    consents = (
        [{"purpose": "marketing", "channel": "email", "status": "granted", "evidence": GRANT}]
        if grant
        else []
    )
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": email,
            "jurisdiction": jurisdiction,
            "consents": consents,
            **extra,
        },
        headers=keys["ingest"],
    )
    assert r.status_code in (200, 201), r.text
    pid = uuid.UUID(r.json()["profile_id"])
    if manage:
        link = await client.post(
            "/v1/preference-links", json={"email": email}, headers=keys["ingest"]
        )
        assert link.status_code == 201, link.text
        assert link.json()["url"].endswith(f"/preferences/{link.json()['token']}")
        return pid, link.json()["token"]
    claims = TokenClaims(pid, "email", platform.keys.indexer.email(email), "marketing", "email")
    return pid, issue(platform.keys.token_key, claims)


async def contactable(client, keys, pid):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
    assert r.status_code == 200
    return r.json()["contactable"]


async def events(client, keys, email, purpose=None):  # type: ignore[no-untyped-def]
    params = {"email": email} | ({"purpose": purpose} if purpose else {})
    r = await client.get("/v1/audit/consent-events", params=params, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()["items"]


def choices_of(html: str) -> dict[str, bool]:
    """Every switch on the page: key -> checked."""
    out = {}
    for tag in re.findall(r'<input type="checkbox"[^>]*name="allow"[^>]*>', html):
        key = re.search(r'value="([^"]+)"', tag).group(1)  # type: ignore[union-attr]
        out[key] = " checked" in tag
    return out


def form_for(html: str, allow: set[str], lang: str = "en") -> dict[str, object]:
    shown = re.findall(r'name="shown" value="([^"]+)"', html)
    return {"lang": lang, "shown": shown, "allow": sorted(allow)}


async def test_page_speaks_the_customers_language_and_masks_addresses(client, keys, platform):
    _, token = await customer(
        client, keys, platform, "anna.ivanova@example.com", phone="+79161234567"
    )
    before = await count(platform, consent_ledger)

    ru = await client.get(f"/preferences/{token}", headers={"Accept-Language": "ru-RU,ru;q=0.9"})
    assert ru.status_code == 200
    assert '<html lang="ru">' in ru.text
    assert "Ваши настройки сообщений" in ru.text
    assert "a***@example.com" in ru.text and "+7********67" in ru.text
    assert "anna.ivanova" not in ru.text and "9161234567" not in ru.text

    en = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert '<html lang="en">' in en.text and "Your communication preferences" in en.text
    assert "Русский" in en.text  # the language switch
    override = await client.get(f"/preferences/{token}?lang=ru", headers=RU_EN)
    assert '<html lang="ru">' in override.text
    # a customer of RU with no Accept-Language reads Russian
    assert '<html lang="ru">' in (await client.get(f"/preferences/{token}")).text

    # looking changes nothing, and the page carries its protections
    assert await count(platform, consent_ledger) == before
    assert "script-src" not in en.headers["content-security-policy"]
    assert "default-src 'none'" in en.headers["content-security-policy"]
    assert en.headers["referrer-policy"] == "no-referrer"
    assert en.headers["cache-control"] == "no-store"
    # accessible structure: every switch has a label, grouped in fieldsets with legends
    for key in choices_of(en.text):
        pid_ = re.search(rf'id="([^"]+)" name="allow" value="{re.escape(key)}"', en.text)
        assert pid_ and f'<label for="{pid_.group(1)}">' in en.text
    assert en.text.count("<fieldset>") == en.text.count("<legend>") >= 2


async def test_withdrawing_marketing_email_is_evidenced_and_stops_contact(client, keys, platform):
    email = "boris@example.com"
    pid, token = await customer(client, keys, platform, email)
    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert choices_of(page.text)["marketing:email"] is True
    query = {
        "purpose": "marketing",
        "channel": "email",
        "rules": {"field": "country", "op": "exists", "value": False},
    }

    allow = {k for k, on in choices_of(page.text).items() if on} - {"marketing:email"}
    r = await client.post(
        f"/preferences/{token}",
        data=form_for(page.text, allow),
        headers=RU_EN | {"User-Agent": "PrefTest/1.0"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/preferences/{token}?done=saved&lang=en"

    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    members = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    assert members.status_code == 200, members.text
    assert str(pid) not in {m["profile_id"] for m in members.json()["items"]}
    last = (await events(client, keys, email, "marketing"))[-1]
    assert (last["status"], last["channel"], last["effective"]) == ("withdrawn", "email", True)
    assert (last["method"], last["source"], last["actor"]) == (
        "preference_centre",
        "preference_centre",
        "customer",
    )
    assert last["wording_id"] == wording_id("en")
    assert last["evidence"]["user_agent"] == "PrefTest/1.0"
    assert last["evidence"]["ip"]
    assert last["evidence"]["page_url"] == "http://testserver/preferences/{token}"  # no token

    shown = await client.get(r.headers["location"])
    assert "Your choices have been saved." in shown.text
    assert choices_of(shown.text)["marketing:email"] is False


async def test_granting_from_the_centre_needs_no_api_and_records_the_wording(
    client, keys, platform
):
    email = "vera@example.com"
    pid, token = await customer(client, keys, platform, email, grant=False, manage=True)
    page = await client.get(f"/preferences/{token}", headers={"Accept-Language": "ru"})
    switches = choices_of(page.text)
    assert switches["marketing:email"] is False and switches["service:email"] is True
    assert switches["sale_share:*"] is False  # opt-in in RU

    allow = {k for k, on in switches.items() if on} | {"marketing:email"}
    r = await client.post(f"/preferences/{token}", data=form_for(page.text, allow, "ru"))
    assert r.status_code == 303
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True
    last = (await events(client, keys, email, "marketing"))[-1]
    assert (last["status"], last["method"]) == ("granted", "preference_centre")
    assert last["wording_id"] == wording_id("ru")


async def test_an_unchanged_form_records_nothing(client, keys, platform):
    _, token = await customer(client, keys, platform, "gleb@example.com")
    page = await client.get(f"/preferences/{token}")
    before = await count(platform, consent_ledger)
    allow = {k for k, on in choices_of(page.text).items() if on}
    r = await client.post(f"/preferences/{token}", data=form_for(page.text, allow))
    assert r.status_code == 303 and "done=unchanged" in r.headers["location"]
    assert await count(platform, consent_ledger) == before


async def test_unsubscribe_from_everything_keeps_service_messages(client, keys, platform):
    email = "dana@example.com"
    pid, token = await customer(client, keys, platform, email, jurisdiction="US-CA", grant=False)
    before = await contactable(client, keys, pid)
    assert before["marketing"]["email"] is True  # CAN-SPAM: opt-out basis
    assert before["sale_share"]["email"] is True

    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303 and "done=opted_out" in r.headers["location"]
    after = await contactable(client, keys, pid)
    assert not any(after["marketing"].values())
    assert not any(after["sale_share"].values())
    assert after["service"]["email"] is True
    mine = await events(client, keys, email)
    assert {(e["purpose"], e["channel"], e["status"]) for e in mine} >= {
        ("marketing", "*", "withdrawn"),
        ("sale_share", "*", "withdrawn"),
    }
    assert all(e["method"] == "preference_centre" for e in mine if e["source"] != "crm")
    page = await client.get(r.headers["location"])
    assert "You are unsubscribed from all advertising" in page.text


async def test_gpc_is_recorded_once_as_an_opt_out_of_sale_for_california(client, keys, platform):
    email = "erin@example.com"
    pid, token = await customer(client, keys, platform, email, jurisdiction="US-CA", grant=False)
    gpc = {"Sec-GPC": "1", "Accept-Language": "en-US"}

    first = await client.get(f"/preferences/{token}", headers=gpc)
    assert first.status_code == 200
    assert "We have recorded it as your request to opt out" in first.text
    assert not any((await contactable(client, keys, pid))["sale_share"].values())
    recorded = await events(client, keys, email, "sale_share")
    # one withdrawal from every channel, for the email address and for the profile (push...)
    assert {(e["subject"]["kind"], e["channel"], e["status"]) for e in recorded} == {
        ("email", "*", "withdrawn"),
        ("profile", "*", "withdrawn"),
    }
    assert all(e["method"] == "gpc" and e["evidence"]["method"] == "gpc" for e in recorded)
    assert all(e["actor"] == "customer" and e["evidence"]["ip"] for e in recorded)
    # the switch says so and cannot be turned back on while the browser sends the signal
    assert re.search(r'value="sale_share:\*" aria-describedby="[^"]+" disabled', first.text)

    again = await client.get(f"/preferences/{token}", headers=gpc)
    assert "Global Privacy Control signal is honoured" in again.text
    assert await events(client, keys, email, "sale_share") == recorded
    # marketing by email is untouched by GPC
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True


async def test_gpc_changes_nothing_where_the_policy_ignores_it(client, keys, platform):
    _, token = await customer(client, keys, platform, "fedor@example.com")
    before = await count(platform, consent_ledger)
    r = await client.get(f"/preferences/{token}", headers={"Sec-GPC": "1"})
    assert r.status_code == 200 and "Global Privacy Control" not in r.text
    assert await count(platform, consent_ledger) == before


async def test_a_mail_scanners_head_on_a_preference_link_is_answered_and_changes_nothing(
    client, keys, platform
):
    """Operators mail preference links; mail scanners send HEAD before they follow one, and it
    was a 405 (the link looked broken). HEAD answers as GET without the body, and records
    nothing: not even the GPC opt-out that a GET with the signal records."""
    email = "hanna.head@example.com"
    pid, token = await customer(client, keys, platform, email, jurisdiction="US-CA", grant=False)
    before = await count(platform, consent_ledger)
    head = await client.head(f"/preferences/{token}", headers=RU_EN)
    got = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    for name in ("content-type", "content-length", "cache-control"):
        assert head.headers[name] == got.headers[name], name
    body, tag = token.split(".")
    forged = body + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    bad = await client.head(f"/preferences/{forged}", headers=RU_EN)
    assert bad.status_code == 404 and bad.content == b""
    with_signal = await client.head(f"/preferences/{token}", headers={"Sec-GPC": "1"})
    assert with_signal.status_code == 200
    assert await count(platform, consent_ledger) == before
    assert await events(client, keys, email, "sale_share") == []
    assert (await contactable(client, keys, pid))["sale_share"]["email"] is True


async def test_a_forged_link_shows_an_error_and_changes_nothing(client, keys, platform):
    _, token = await customer(client, keys, platform, "galina@example.com")
    body, tag = token.split(".")
    forged = body + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    before = await count(platform, consent_ledger)
    r = await client.get(f"/preferences/{forged}", headers=RU_EN)
    assert r.status_code == 404 and "This link is not valid" in r.text
    assert r.headers["content-type"].startswith("text/html")
    for path in ("", "/opt-out", "/access", "/erasure"):
        r = await client.post(f"/preferences/{forged}{path}", data={"confirm": "yes"})
        assert r.status_code == 404, path
    assert await count(platform, consent_ledger) == before


async def test_access_copy_downloads_as_json_and_is_logged(client, keys, platform):
    email = "hanna@example.com"
    pid, token = await customer(client, keys, platform, email, manage=True)
    r = await client.post(f"/preferences/{token}/access", data={"lang": "en"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == 'attachment; filename="my-data.json"'
    data = r.json()
    assert email in str(data["profile"]) and data["consent_history"]
    log = await client.get(
        "/v1/audit/access-log", params={"profile_id": str(pid)}, headers=keys["compliance"]
    )
    assert [(e["actor"], e["action"]) for e in log.json()["items"]][-1] == (
        "customer",
        "access_request.export",
    )


async def test_issuing_a_manage_link_is_in_the_access_log_under_the_key(client, keys, platform):
    """A manage link downloads everything held about the customer, and the key that asked for
    it (an ingest key can) is who could read it: the access log named only "customer" for the
    download, so a key holder fetching a link and the data behind it left no trace of its own
    (only a line in the service's log)."""
    pid, token = await customer(client, keys, platform, "ida@example.com", manage=True)
    r = await client.post(f"/preferences/{token}/access", data={"lang": "en"})
    assert r.status_code == 200
    log = await client.get(
        "/v1/audit/access-log", params={"profile_id": str(pid)}, headers=keys["compliance"]
    )
    entries = [(e["actor"], e["action"], e["rows"]) for e in log.json()["items"]]
    assert entries[0] == ("ingest-key", "preference_link.issued", 0), entries
    assert entries[-1][:2] == ("customer", "access_request.export")
    assert token not in log.text


async def test_erasure_needs_confirmation_then_is_requested_by_the_customer(client, keys, platform):
    pid, token = await customer(client, keys, platform, "ivan@example.com", manage=True)
    r = await client.post(f"/preferences/{token}/erasure", data={"lang": "en"})
    assert r.status_code == 400 and "Tick the box" in r.text
    listed = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    assert listed.json()["items"] == []

    r = await client.post(f"/preferences/{token}/erasure", data={"lang": "en", "confirm": "yes"})
    assert r.status_code == 202
    assert "Your request to delete your data was received" in r.text
    [request] = (await client.get("/v1/erasure-requests", headers=keys["compliance"])).json()[
        "items"
    ]
    assert (request["requested_by"], request["profile_id"]) == ("customer", str(pid))
    assert request["due_at"][:10] in r.text
    # the erasure ran right after the answer: the link now says the data is gone
    assert request["status"] == "completed"
    gone = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert gone.status_code == 410 and "Your data has been deleted" in gone.text


async def test_a_second_erasure_request_joins_the_open_one(client, keys, platform):
    pid, token = await customer(client, keys, platform, "jana@example.com", manage=True)
    await submit_erasure(
        platform, Identifier("profile_id", profile_id=pid), requested_by="operator", actor="t"
    )
    r = await client.post(f"/preferences/{token}/erasure", data={"confirm": "yes", "lang": "en"})
    assert r.status_code == 202 and "already open" in r.text
    listed = (await client.get("/v1/erasure-requests", headers=keys["compliance"])).json()
    assert len(listed["items"]) == 1


async def test_the_unsubscribe_link_in_messages_can_only_stop_messages(client, keys, platform):
    """The sending tools hold every member's unsubscribe token: it must not forge a grant,
    read the customer's data or erase them."""
    email = "kira@example.com"
    pid, token = await customer(client, keys, platform, email, grant=False)
    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert 'value="marketing:email"' in page.text
    off = re.search(r'<input type="checkbox"[^>]*value="marketing:email"[^>]*>', page.text)
    assert off is not None and " disabled" in off.group(0)
    assert "sign in to your account" in page.text and "/access" not in page.text
    allow = {k for k, on in choices_of(page.text).items() if on} | {"marketing:email"}
    r = await client.post(f"/preferences/{token}", data=form_for(page.text, allow))
    assert r.status_code == 303 and "done=unchanged" in r.headers["location"]
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    r = await client.post(f"/preferences/{token}/access", data={"lang": "en"})
    assert r.status_code == 403 and email not in r.text
    r = await client.post(f"/preferences/{token}/erasure", data={"lang": "en", "confirm": "yes"})
    assert r.status_code == 403
    r = await client.post(f"/v1/erasure-requests/by-token/{token}")
    assert r.status_code == 403
    listed = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    assert listed.json()["items"] == []
    assert [e["status"] for e in await events(client, keys, email)] == []


async def test_manage_links_are_issued_to_the_operator_and_expire(client, keys, platform):
    pid, token = await customer(client, keys, platform, "lev@example.com", manage=True)
    claims = verify(platform.keys.token_key, token)
    assert claims.can_manage and claims.profile_id == pid
    with pytest.raises(TokenError):
        verify(platform.keys.token_key, token, now=claims.expires_at)
    for role in ("marketing", "compliance"):
        r = await client.post(
            "/v1/preference-links", json={"email": "lev@example.com"}, headers=keys[role]
        )
        assert r.status_code == 403
    r = await client.post(
        "/v1/preference-links",
        json={"email": "lev@example.com", "valid_minutes": 0},
        headers=keys["ingest"],
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "valid_minutes"
    r = await client.post(
        "/v1/preference-links", json={"email": "nobody@example.com"}, headers=keys["ingest"]
    )
    assert r.status_code == 404
    r = await client.post(f"/v1/erasure-requests/by-token/{token}")
    assert r.status_code == 202


# ----------------------------------------------------------------------------- plain rules


def test_language_choice():
    assert choose_language("ru-RU,ru;q=0.9,en-US;q=0.8") == "ru"
    assert choose_language("de-DE,en;q=0.5,ru;q=0.4") == "en"
    assert choose_language("en;q=0.2, ru;q=0.7") == "ru"
    assert choose_language("de, fr") == "en"
    assert choose_language(None, fallback="ru") == "ru"
    assert choose_language("en", override="ru") == "ru"
    assert choose_language("ru", override="xx") == "ru"
    assert choose_language("ru;q=0, en;q=0.1") == "en"


def test_both_catalogs_say_everything():
    assert set(CATALOGS["en"]) == set(CATALOGS["ru"])
    assert all(v.strip() for catalog in CATALOGS.values() for v in catalog.values())


def test_masks_show_no_more_than_a_hint():
    assert mask_email("anna.ivanova@example.com") == "a***@example.com"
    assert mask_phone("+79161234567") == "+7********67"
    assert mask_phone("+1234") == "***"


def test_switches_follow_policy_and_addresses():
    policy = load_policy(DEFAULT_POLICY_DIR)
    everything = {p: dict.fromkeys(policy.channels, True) for p in policy.purposes}
    ru = build_groups(policy, "RU", everything, {"email": ["a***@x.ru"]})
    keys = {c.key for g in ru for c in g.choices}
    assert "marketing:email" in keys and "marketing:push" in keys
    assert "marketing:sms" not in keys  # no phone number on file
    assert "sale_share:*" in keys  # one switch for the whole purpose
    ca = build_groups(policy, "US-CA", everything, {"email": ["a***@x.com"]}, gpc=True)
    [sale] = [c for g in ca for c in g.choices if c.purpose == "sale_share"]
    assert sale.key == "sale_share:*" and sale.locked
    [service] = [g for g in ca if g.purpose == "service"]
    assert service.contract


def test_a_form_changes_only_what_was_shown_and_is_not_locked():
    on = Choice("marketing:email", "marketing", "email", ("email",), True)
    off = Choice("marketing:sms", "marketing", "sms", ("sms",), False)
    locked = Choice("sale_share:*", "sale_share", "*", ("email",), False, locked=True)
    groups = [Group("marketing", False, (on, off)), Group("sale_share", False, (locked,))]
    shown = {"marketing:email", "marketing:sms", "sale_share:*"}
    changes = plan_changes(groups, shown, {"marketing:sms", "sale_share:*"})
    assert [(c.choice.key, c.status) for c in changes] == [
        ("marketing:email", "withdrawn"),
        ("marketing:sms", "granted"),
    ]
    assert plan_changes(groups, set(), set()) == []  # nothing shown, nothing changed


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_stylesheet_colours_meet_wcag_aa_contrast():
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6});", STYLESHEET))
    text_pairs = [
        ("ink", "paper"),
        ("ink", "panel"),
        ("muted", "paper"),
        ("muted", "panel"),
        ("accent", "paper"),
        ("accent", "panel"),
        ("accent-ink", "accent"),
        ("accent-ink", "danger"),
        ("danger", "paper"),
        ("ok", "paper"),
    ]
    for fg, bg in text_pairs:
        assert contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg)
    assert contrast(colours["focus"], colours["paper"]) >= 3  # the focus ring (non-text)
    assert ":focus-visible" in STYLESHEET


async def test_unticking_every_switch_and_saving_withdraws_everything(client, keys, platform):
    """A browser sends no "allow" field at all when every box is unticked: the most natural
    way to withdraw everything (as easy as granting, GDPR art. 7(3)) used to be a 500 that
    recorded nothing."""
    pid, token = await customer(client, keys, platform, "olga.none@example.com")
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True
    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    form = form_for(page.text, set())
    assert form["shown"] and not form["allow"]
    r = await client.post(f"/preferences/{token}", data={"lang": "en", "shown": form["shown"]})
    assert r.status_code == 303, r.text
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    # a form with no switch at all (every choice locked) changes nothing, without an error
    r = await client.post(f"/preferences/{token}", data={"lang": "en"})
    assert r.status_code == 303, r.text
    assert "done=unchanged" in r.headers["location"]


async def test_a_customer_with_two_emails_sees_which_one_a_switch_is_on_for(client, keys, platform):
    """Both emails had marketing; the customer unsubscribed one from a message sent to it and
    followed "manage all my preferences": the switch, on for the other email, named both
    addresses as if both still got advertising."""
    grant = [{"purpose": "marketing", "channel": "email", "status": "granted", "evidence": GRANT}]
    for email in ("anna@example.com", "boris@example.com"):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": email,
                "phone": "+79161230000",
                "jurisdiction": "RU",
                "consents": grant,
            },
            headers=keys["ingest"],
        )
        assert r.status_code in (200, 201), r.text
    pid = uuid.UUID(r.json()["profile_id"])
    second = TokenClaims(
        pid, "email", platform.keys.indexer.email("boris@example.com"), "marketing", "email"
    )
    token = issue(platform.keys.token_key, second)
    label = re.compile(r'<label for="pref-marketing-email">([^<]*)<span class="address">([^<]*)')

    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert label.search(page.text).group(2) == "(a***@example.com, b***@example.com)"  # type: ignore[union-attr]
    r = await client.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200

    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert choices_of(page.text)["marketing:email"] is True  # anna@ still gets it
    assert label.search(page.text).group(2) == "(a***@example.com; off for b***@example.com)"  # type: ignore[union-attr]
    ru = await client.get(f"/preferences/{token}", headers={"Accept-Language": "ru"})
    assert label.search(ru.text).group(2) == "(a***@example.com; отключено для b***@example.com)"  # type: ignore[union-attr]

    # unticking it stops both; the switch then names both again, off
    allow = {k for k, on in choices_of(page.text).items() if on} - {"marketing:email"}
    await client.post(f"/preferences/{token}", data=form_for(page.text, allow))
    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    assert choices_of(page.text)["marketing:email"] is False
    assert label.search(page.text).group(2) == "(a***@example.com, b***@example.com)"  # type: ignore[union-attr]
