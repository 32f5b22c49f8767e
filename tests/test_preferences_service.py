"""The preference centre's "unsubscribe from everything" and messages about orders: it stops all
advertising everywhere, and of service messages only the channels that do not rest on the
contract alone (US federal service SMS, opt-in under the TCPA). It used to withdraw `service`
on `*` for a US customer, stopping order messages on every channel while the page said
"Messages about your orders continue"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from api.controllers.preferences import opt_out_plan, opt_out_text
from api.i18n import messages
from cdp.settings import DEFAULT_POLICY_DIR
from consent.policy import load_policy
from tests.helpers import segment_members
from tests.test_preferences import contactable, events

EV = {"wording_id": "w-v1", "method": "checkbox"}
CONTINUE = "Messages about your orders continue."


async def us_customer(client, keys, email, phone=None):  # type: ignore[no-untyped-def]
    body = {"source": "crm", "email": email, "jurisdiction": "US"}
    r = await client.post(
        "/v1/profiles", json=body | ({"phone": phone} if phone else {}), headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def token_of(client, keys, pid):  # type: ignore[no-untyped-def]
    [member] = [
        m for m in await segment_members(client, keys, "service", "email") if m["profile_id"] == pid
    ]
    return member["unsubscribe_token"]


def optout_paragraph(html: str) -> str:
    start = html.index('<p id="optout-text">') + len('<p id="optout-text">')
    return html[start : html.index("</p>", start)]


def service_events(mine: list[dict]) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(e["channel"], e["status"]) for e in mine if e["purpose"] == "service"}


# ----------------------------------------------------------------------------- over HTTP


async def test_unsubscribe_from_everything_keeps_order_messages_for_a_us_customer(client, keys):
    pid = await us_customer(client, keys, "us@example.com", "+14155550100")
    token = await token_of(client, keys, pid)
    before = (await contactable(client, keys, pid))["service"]
    assert before["email"] is True
    page = await client.get(f"/preferences/{token}?lang=en")
    assert "Messages about your orders continue" in page.text
    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303
    after = (await contactable(client, keys, pid))["service"]
    # service rests on the contract for email, phone, push, messenger (POLICIES.md, US.toml)
    assert after == before, after
    assert pid in {m["profile_id"] for m in await segment_members(client, keys, "service", "email")}


async def test_unsubscribe_from_everything_withdraws_a_us_customers_service_sms_opt_in(
    client, keys
):
    """Automated service texts need prior consent in the US (TCPA): "everything" withdraws
    that consent too (the fail-closed reading, and the page says so beforehand), once, on the
    sms channel; every other order channel, resting on the contract, goes on."""
    email, phone = "sms.us@example.com", "+14155550111"
    pid = await us_customer(client, keys, email, phone)
    for purpose, channel in (("service", "sms"), ("marketing", "sms")):
        r = await client.post(
            "/v1/consents",
            json={
                "phone": phone,
                "purpose": purpose,
                "channel": channel,
                "status": "granted",
                "source": "web_form",
                "evidence": EV,
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    before = await contactable(client, keys, pid)
    assert all(before["service"].values()) and before["marketing"]["sms"] is True
    token = await token_of(client, keys, pid)

    page = await client.get(f"/preferences/{token}?lang=en")
    assert optout_paragraph(page.text).endswith(
        "Messages about your orders continue, except by SMS: those need your separate "
        "consent, which this withdraws too."
    )
    ru = await client.get(f"/preferences/{token}?lang=ru")
    assert "кроме сообщений по каналам: SMS." in optout_paragraph(ru.text)

    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303, r.text
    after = await contactable(client, keys, pid)
    assert after["service"] == before["service"] | {"sms": False}
    assert not any(after["marketing"].values())
    mine = [e for e in await events(client, keys, email) if e["source"] == "preference_centre"]
    assert service_events(mine) == {("sms", "withdrawn")}
    assert sum(e["purpose"] == "service" for e in mine) == 1  # the phone is the one address
    assert {(e["purpose"], e["channel"]) for e in mine if e["purpose"] != "service"} == {
        ("marketing", "*")
    }
    assert all(e["method"] == "preference_centre" for e in mine)
    assert await segment_members(client, keys, "service", "sms") == []
    assert pid in {m["profile_id"] for m in await segment_members(client, keys, "service", "email")}


async def test_unsubscribe_from_everything_for_a_us_customer_without_a_phone(client, keys):
    """No phone, no service text to stop: nothing of `service` is recorded (a withdrawal on a
    channel the customer has no address on is refused, which would make the button fail)."""
    email = "nophone.us@example.com"
    pid = await us_customer(client, keys, email)
    token = await token_of(client, keys, pid)
    page = await client.get(f"/preferences/{token}?lang=en")
    assert optout_paragraph(page.text).endswith(CONTINUE)
    before = await contactable(client, keys, pid)
    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303, r.text
    after = await contactable(client, keys, pid)
    assert after["service"] == before["service"]
    assert not any(after["marketing"].values())
    assert service_events(await events(client, keys, email)) == set()


@pytest.mark.parametrize("jurisdiction", ["RU", "EU"])
async def test_unsubscribe_from_everything_stops_all_advertising_and_keeps_service(
    client, keys, platform, jurisdiction
):
    email, phone = f"all.{jurisdiction.lower()}@example.com", "+79161234500"
    grants = [
        {"purpose": "marketing", "channel": c, "status": "granted", "evidence": EV}
        for c in ("email", "sms", "push")
    ]
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": email,
            "phone": phone,
            "jurisdiction": jurisdiction,
            "consents": grants,
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    pid = r.json()["profile_id"]
    before = await contactable(client, keys, pid)
    assert before["marketing"]["email"] and before["marketing"]["sms"]
    assert all(before["service"].values())
    token = await token_of(client, keys, pid)
    page = await client.get(f"/preferences/{token}?lang=en")
    assert optout_paragraph(page.text).endswith(CONTINUE)
    assert "except" not in optout_paragraph(page.text)

    r = await client.post(f"/preferences/{token}/opt-out", data={"lang": "en"})
    assert r.status_code == 303, r.text
    after = await contactable(client, keys, pid)
    assert not any(after["marketing"].values())
    assert not any(after["sale_share"].values())
    assert after["service"] == before["service"]
    mine = [e for e in await events(client, keys, email) if e["source"] == "preference_centre"]
    assert {(e["purpose"], e["channel"]) for e in mine} == {
        ("marketing", "*"),
        ("sale_share", "*"),
    }
    for channel in ("email", "sms"):
        assert await segment_members(client, keys, "marketing", channel) == []


# ----------------------------------------------------------------------------- plain rules


def test_the_plan_in_every_shipped_jurisdiction_stops_advertising_and_keeps_the_contract():
    policy = load_policy(DEFAULT_POLICY_DIR)
    assert {"RU", "EU", "US", "US-CA"} <= set(policy.jurisdictions)
    for code in policy.jurisdictions:
        plan = opt_out_plan(policy, code, {"email", "phone"})
        for purpose, spec in policy.purposes.items():
            bases = {c: policy.basis(code, purpose, c) for c in policy.channels}
            planned = {c for p, c in plan if p == purpose}
            if not any(bases.values()):
                assert planned == set(), (code, purpose)
            elif spec.advertising or "contract" not in bases.values():
                assert planned == {"*"}, (code, purpose)
            else:
                assert planned == {c for c, b in bases.items() if b not in (None, "contract")}, (
                    code,
                    purpose,
                )
        # the page's wording holds: order messages continue wherever they rest on the contract
        service = [c for p, c in plan if p == "service"]
        for lang in ("en", "ru"):
            t = messages(lang)
            text = opt_out_text(t, plan)
            assert text.startswith(t.pref_optout_text)
            if not service:
                assert text.endswith(t.pref_optout_orders_continue), (code, lang)
    assert opt_out_plan(policy, "US", {"email", "phone"}) == [
        ("service", "sms"),
        ("marketing", "*"),
    ]
    assert opt_out_plan(policy, "US", {"email"}) == [("marketing", "*")]
    for code in ("RU", "EU", "US-CA"):
        assert opt_out_plan(policy, code, {"email", "phone"}) == [
            ("marketing", "*"),
            ("sale_share", "*"),
        ]


def other_jurisdictions(tmp_path: Path) -> Path:
    """The shipped policy and two jurisdictions an operator might add: one where every service
    message needs consent (and, misconfigured, advertising email rests on the contract), one
    where service texts need consent and service push can be refused."""
    target = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    deadlines = (
        '[deadlines.access]\nperiod = 30\nunit = "days"\n'
        '[deadlines.erasure]\nperiod = 30\nunit = "days"\n'
    )
    (target / "jurisdictions" / "XA.toml").write_text(
        'code = "XA"\nname = "A"\nphone_region = "DE"\n'
        '[rules.service]\ndefault = "opt_in"\n'
        '[rules.marketing]\ndefault = "opt_in"\nemail = "contract"\n' + deadlines,
        encoding="utf-8",
    )
    (target / "jurisdictions" / "XB.toml").write_text(
        'code = "XB"\nname = "B"\nphone_region = "DE"\n'
        '[rules.service]\ndefault = "contract"\nsms = "opt_in"\npush = "opt_out"\n'
        '[rules.marketing]\ndefault = "opt_in"\n' + deadlines,
        encoding="utf-8",
    )
    return target


def test_the_plan_and_its_wording_in_a_jurisdiction_an_operator_adds(tmp_path):
    policy = load_policy(other_jurisdictions(tmp_path))
    t = messages("en")
    # advertising stops on every channel whatever its basis; service needing consent throughout
    # is withdrawn as a whole, and the page says order messages stop too
    xa = opt_out_plan(policy, "XA", {"email"})
    assert xa == [("service", "*"), ("marketing", "*")]
    assert opt_out_text(t, xa).endswith(t.pref_optout_orders_stop)
    # per channel where some service channel rests on the contract, and only where the
    # customer has an address of its kind (push reaches the profile)
    xb = opt_out_plan(policy, "XB", {"email", "phone"})
    assert xb == [("service", "sms"), ("service", "push"), ("marketing", "*")]
    assert opt_out_text(t, xb).endswith(
        "Messages about your orders continue, except by SMS, App notifications: those need "
        "your separate consent, which this withdraws too."
    )
    assert opt_out_plan(policy, "XB", {"email"}) == [("service", "push"), ("marketing", "*")]
    # a jurisdiction the policy does not know: nothing is allowed, nothing to withdraw
    assert opt_out_plan(policy, "ZZ", {"email"}) == []
    assert opt_out_text(t, []).endswith(CONTINUE)
