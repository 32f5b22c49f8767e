"""GET /metrics: what an operator alerts on (overdue erasures, webhook backlog, the key store),
behind a token of its own, and never a customer's address or a link's token."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from cdp.ids import utcnow
from consent.dsr_tables import dsr_requests

TOKEN = "scraper-secret-0123456789"


@pytest.fixture
def metrics_on(platform):  # before `client`: the app counts requests only with a token set
    platform.settings = dataclasses.replace(platform.settings, metrics_token=TOKEN)
    return platform


def scrape_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def value(text: str, line_start: str) -> float:
    """The value of the first sample line starting with `line_start`."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r}")


async def test_off_without_a_token_and_an_api_key_is_not_a_scraper(client, keys):
    r = await client.get("/metrics", headers=keys["admin"])
    assert r.status_code == 404  # off until CDP_METRICS_TOKEN is set


async def test_only_the_metrics_token_scrapes(metrics_on, client, keys):
    for headers in ({}, keys["admin"], scrape_headers("scraper-secret-wrong-value")):
        r = await client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
    r = await client.get("/metrics", headers=scrape_headers())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


async def test_an_overdue_erasure_and_the_webhook_backlog_show(metrics_on, client, keys):
    email = "anna.metrics@example.com"
    await client.post(
        "/v1/profiles", json={"source": "crm", "email": email}, headers=keys["ingest"]
    )
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": email, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    request_id = r.json()["request_id"]
    text = (await client.get("/metrics", headers=scrape_headers())).text
    assert value(text, "cdp_dsr_overdue_requests") == 0
    # a request still open past its due date (the worker failed to finish it)
    async with metrics_on.db.write() as conn:
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == uuid.UUID(request_id))
            .values(status="in_progress", due_at=utcnow() - timedelta(days=1))
        )
    text = (await client.get("/metrics", headers=scrape_headers())).text
    assert value(text, "cdp_dsr_overdue_requests") == 1
    assert value(text, 'cdp_dsr_open_requests{status="in_progress"}') == 1

    # a webhook subscriber that has not been sent an opt-out yet
    r = await client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "kinds": ["opt_out"]},
        headers=keys["admin"],
    )
    assert r.status_code == 201, r.text
    await client.post(
        "/v1/opt-outs", json={"email": email, "source": "esp"}, headers=keys["ingest"]
    )
    text = (await client.get("/metrics", headers=scrape_headers())).text
    assert value(text, "cdp_key_store_up") == 1
    assert value(text, "cdp_consent_ledger_entries") >= 1
    assert value(text, 'cdp_upgrade_step_pending{step="events_seal"}') == 0
    assert email not in text


async def test_request_figures_name_routes_not_paths(metrics_on, client, keys):
    """A path can hold a link's token (a manage link lets its holder download the customer's
    data): the figures are labelled by the route template."""
    await client.post(
        "/v1/profiles", json={"source": "crm", "email": "boris@example.com"}, headers=keys["ingest"]
    )
    link = await client.post(
        "/v1/preference-links", json={"email": "boris@example.com"}, headers=keys["ingest"]
    )
    token = link.json()["token"]
    assert (await client.get(f"/preferences/{token}")).status_code == 200
    text = (await client.get("/metrics", headers=scrape_headers())).text
    assert token not in text
    assert 'path="/preferences/{token}"' in text
    assert "cdp_requests_total" in text
