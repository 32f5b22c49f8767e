"""The preference centre and the compliance console in a real browser (headless Chromium).

1. A customer opens the link from a marketing email (the segment member's token), withdraws
   marketing by email with the keyboard, and the segment API no longer returns them; a
   compliance officer signs in, finds that customer and sees the withdrawal in the history.
2. A browser sending Global Privacy Control is recorded once as opted out of sale/sharing for a
   California customer, who can also download a copy of their data from a manage link.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Server

GRANT = {"wording_id": "newsletter-v3", "method": "double_opt_in", "ip": "203.0.113.7"}


def add_customer(server: Server, email: str, jurisdiction: str, consents: list[dict]) -> str:
    with server.api("ingest") as api:
        r = api.post(
            "/v1/profiles",
            json={
                "source": "shop",
                "email": email,
                "first_name": "Анна",
                "jurisdiction": jurisdiction,
                "consents": consents,
            },
        )
        assert r.status_code == 201, r.text
        return r.json()["profile_id"]


def members(server: Server, jurisdiction: str) -> dict[str, dict[str, Any]]:
    """Who the marketing tool may email now: profile_id -> member (with unsubscribe_token)."""
    query = {
        "purpose": "marketing",
        "channel": "email",
        "rules": {"field": "jurisdiction", "op": "eq", "value": jurisdiction},
    }
    with server.api("marketing") as api:
        r = api.post("/v1/segments/query", json=query)
        assert r.status_code == 200, r.text
        return {m["profile_id"]: m for m in r.json()["items"]}


def ledger(server: Server, email: str, purpose: str) -> list[dict[str, Any]]:
    with server.api("compliance") as api:
        r = api.get("/v1/audit/consent-events", params={"email": email, "purpose": purpose})
        assert r.status_code == 200, r.text
        return r.json()["items"]


def test_customer_withdraws_marketing_email_and_the_officer_sees_it(
    browser: Any, server: Server, artifacts: Path
) -> None:
    email = "anna.ivanova@example.com"
    granted = [{"purpose": "marketing", "channel": "email", "status": "granted", "evidence": GRANT}]
    pid = add_customer(server, email, "RU", granted)
    member = members(server, "RU")[pid]
    link = f"{server.url}/preferences/{member['unsubscribe_token']}"

    customer = browser.new_context(locale="ru-RU")
    page = customer.new_page()
    response = page.goto(link)
    assert response.status == 200
    assert page.locator("html").get_attribute("lang") == "ru"
    assert page.get_by_role("heading", level=1).inner_text() == "Ваши настройки сообщений"
    assert "anna.ivanova" not in page.content()  # addresses are masked
    marketing = page.get_by_role("group", name="Реклама и предложения")
    by_email = marketing.get_by_role("checkbox", name="Электронная почта (a***@example.com)")
    assert by_email.is_checked()

    by_email.focus()  # keyboard only: Space toggles, Enter on the button submits
    page.keyboard.press("Space")
    assert not by_email.is_checked()
    page.get_by_role("button", name="Сохранить выбор").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**done=saved**")
    assert page.get_by_role("status").first.inner_text() == "Ваш выбор сохранён."
    assert not by_email.is_checked()
    page.screenshot(path=str(artifacts / "preferences.png"), full_page=True)
    customer.close()

    assert pid not in members(server, "RU")  # the segment API no longer returns them
    withdrawal = ledger(server, email, "marketing")[-1]
    assert (withdrawal["status"], withdrawal["method"]) == ("withdrawn", "preference_centre")
    assert withdrawal["evidence"]["user_agent"] and withdrawal["evidence"]["ip"]

    officer = browser.new_context(locale="en-GB")
    console = officer.new_page()
    response = console.goto(f"{server.url}/console")
    assert response.status == 401  # the sign-in form
    console.get_by_label("API key").fill(server.keys["compliance"])
    console.get_by_role("button", name="Sign in").click()
    console.get_by_label("Email or phone number").fill(email)
    console.get_by_role("button", name="Find").click()
    console.wait_for_url(f"**/console/customers/{pid}")
    history = console.locator("#history tbody tr")
    assert history.count() == 2
    last = history.last.inner_text()
    assert "withdrawn" in last and "marketing / email" in last
    assert "preference_centre" in last and "hash recomputes" in last
    console.screenshot(path=str(artifacts / "console-customer.png"), full_page=True)

    session = next(c for c in officer.cookies() if c["name"] == "cdp_console")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert server.keys["compliance"] not in session["value"]

    with console.expect_download() as download:
        console.get_by_role("link", name="Download evidence bundle (JSON)").click()
    bundle = json.loads(Path(download.value.path()).read_text())
    assert [e["method"] for e in bundle["events"]][-1] == "preference_centre"

    console.get_by_role("link", name="Access log").click()
    assert "console.customer" in console.locator("table").inner_text()
    console.get_by_role("link", name="Ledger verification").click()
    assert "The consent ledger verifies." in console.locator("#verify-result").inner_text()
    console.get_by_role("button", name="Sign out").click()
    assert console.get_by_label("API key").is_visible()
    officer.close()


def test_gpc_browser_is_recorded_once_as_opted_out_of_sale(
    browser: Any, server: Server, artifacts: Path
) -> None:
    email = "erin.walker@example.com"
    pid = add_customer(server, email, "US-CA", [])  # CAN-SPAM: email marketing is opt-out
    link = f"{server.url}/preferences/{members(server, 'US-CA')[pid]['unsubscribe_token']}"

    context = browser.new_context(locale="en-US", extra_http_headers={"Sec-GPC": "1"})
    page = context.new_page()
    page.goto(link)
    notice = page.locator(".notice.gpc").inner_text()
    assert "We have recorded it as your request to opt out" in notice
    sale = page.get_by_role("group", name="Sale or sharing of my personal information")
    switch = sale.get_by_role("checkbox")
    assert switch.is_disabled() and not switch.is_checked()
    page.screenshot(path=str(artifacts / "preferences-gpc.png"), full_page=True)

    recorded = ledger(server, email, "sale_share")
    assert recorded and all(
        (e["status"], e["channel"], e["method"]) == ("withdrawn", "*", "gpc") for e in recorded
    )
    page.reload()
    assert "is honoured" in page.locator(".notice.gpc").inner_text()
    assert ledger(server, email, "sale_share") == recorded  # not again on every view
    assert pid in members(server, "US-CA")  # GPC is about sale/sharing, not email marketing

    # the link in the message can only stop messages; a manage link from the operator's site,
    # once the customer has signed in there, can also download their data
    assert page.get_by_role("button", name="Download my data").count() == 0
    with server.api("ingest") as api:
        manage = api.post("/v1/preference-links", json={"email": email}).json()["url"]
    page.goto(manage)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download my data").click()
    copy = json.loads(Path(download.value.path()).read_text())
    assert email in json.dumps(copy["profile"])
    context.close()
