"""A trait's text is a label, at most 1,000 characters (cdp.profiles.schemas.TRAIT_TEXT_MAX).

Traits are stored in plain text in the profile's row (segments filter on them in SQL); any
length used to be taken, so one client could put a megabyte into every customer's row, and
every backup. A longer value is a 400 naming the trait that stores nothing, and a rejected
import row with its reason; at the bound it is kept as sent."""

from __future__ import annotations

from cdp.db.tables import profiles
from cdp.importer import run_import
from cdp.profiles.schemas import TRAIT_TEXT_MAX
from tests.helpers import count


async def post(client, keys, note: str):  # type: ignore[no-untyped-def]
    body = {"source": "crm", "email": "label@example.com", "traits": {"note": note}}
    return await client.post("/v1/profiles", json=body, headers=keys["ingest"])


async def test_a_trait_longer_than_the_bound_is_a_400_that_stores_nothing(client, keys, platform):
    r = await post(client, keys, "x" * (TRAIT_TEXT_MAX + 1))
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [{"field": "traits.note", "message": "at most 1000 characters"}]
    assert "x" * 50 not in r.text  # the value is not echoed
    assert await count(platform, profiles) == 0

    r = await post(client, keys, "я" * TRAIT_TEXT_MAX)  # characters, not bytes
    assert r.status_code == 201, r.text
    got = await client.get(f"/v1/profiles/{r.json()['profile_id']}", headers=keys["admin"])
    assert got.json()["traits"] == {"note": "я" * TRAIT_TEXT_MAX}


async def test_an_import_rejects_the_row_and_says_why(platform, tmp_path):
    src = tmp_path / "crm.csv"
    src.write_text(
        "email,traits.note\n"
        f"long@example.com,{'x' * (TRAIT_TEXT_MAX + 1)}\n"
        f"fine@example.com,{'x' * TRAIT_TEXT_MAX}\n",
        encoding="utf-8",
    )
    summary = await run_import(platform, src, "crm")
    assert (summary.created, summary.rejected_rows) == (1, 1)
    rejects = summary.rejects_path.read_text(encoding="utf-8").splitlines()
    assert rejects == ["row,field,reason", "2,traits.note,at most 1000 characters"]
