"""An unmerge of a survivor beside a record that merges another profile into it (found by the
linearizability review, tests/test_linearizability.py, on PostgreSQL with three workers). The
unmerge read which merges to undo before it took its locks; a merge committed in between was
left standing, made through a link (the external id) that the unmerge then gave back to the
other profile: no order of the two requests ends so. Now the merges into the survivor are read
again once the unmerge holds its locks, and those committed meanwhile are undone too.

SQLite runs one write transaction at a time, so there the record cannot come in between."""

from __future__ import annotations

import pytest

import cdp.profiles.unmerge as unmerge_module
from tests.helpers import record

ANNA, BORIS, CARL = "anna.m@example.com", "boris.m@example.com", "carl.m@example.com"


async def test_a_merge_committed_while_an_unmerge_begins_is_undone_too(
    backend, platform, client, keys, monkeypatch
):
    if backend == "sqlite":
        pytest.skip("SQLite runs one write transaction at a time")

    anna = (await record(client, keys, email=ANNA))["profile_id"]
    boris = (await record(client, keys, email=BORIS, external_id="C-9"))["profile_id"]
    carl = (await record(client, keys, email=CARL))["profile_id"]
    merged = await record(client, keys, email=ANNA, external_id="C-9")
    assert merged["merged_profile_ids"] == [boris]

    real = unmerge_module.undo_merge
    carl_merged: list[dict] = []  # type: ignore[type-arg]

    async def undo_merge(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not carl_merged:  # after the unmerge read what to undo, before its locks
            carl_merged.append(await record(client, keys, email=CARL, external_id="C-9"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(unmerge_module, "undo_merge", undo_merge)
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert carl_merged[0]["merged_profile_ids"] == [carl]  # Carl joined Anna through C-9

    # every merge into Anna is undone: Carl holds his address again, Boris his and C-9
    for email, pid in ((ANNA, anna), (BORIS, boris), (CARL, carl)):
        r = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
        assert r.json()["profile_id"] == pid, email
