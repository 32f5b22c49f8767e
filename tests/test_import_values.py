"""A CSV trait value gets the type the same value written in JSON would have: segment rules are
typed (`traits.kids eq 0` does not match `false`), so an import must not retype values."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cdp.importer import _trait_value, run_import


def as_json_reads_it(text: str) -> object:
    """The rule said another way: the value as JSON reads it when it is a boolean (any case)
    or a finite number without an exponent, else the text as written."""
    plain = text.strip()
    if plain.lower() in ("true", "false"):
        return plain.lower() == "true"
    if "e" in plain.lower():
        return text
    try:
        value = json.loads(plain)
    except ValueError:  # not JSON, or an integer of more than 4,300 digits
        return text
    if isinstance(value, bool) or not isinstance(value, int | float):
        return text
    return text if isinstance(value, float) and not math.isfinite(value) else value


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(st.text(max_size=12), st.text(" +-_.eE0123456789infatyINFATYsno\u0662", max_size=10))
)
@example("1" * 400 + ".5")
@example("9" * 5000)
def test_a_trait_value_is_what_json_would_read(text: str) -> None:
    got, want = _trait_value(text), as_json_reads_it(text)
    assert type(got) is type(want) and got == want


async def test_csv_traits_keep_their_natural_types(platform, tmp_path, client, keys):
    src = tmp_path / "crm.csv"
    columns = {
        "kids": ["0", "1", "2"],
        "code": ["00123", "007", "+7"],
        "score": ["1e3", "0.5", "-12"],
        "vip": ["TRUE", "false", "yes"],
    }
    header = "email," + ",".join(f"traits.{name}" for name in columns)
    rows = [f"c{i}@example.com," + ",".join(v[i] for v in columns.values()) for i in range(3)]
    src.write_text("\n".join([header, *rows]) + "\n", "utf-8")
    summary = await run_import(platform, src, "crm")
    assert (summary.created, summary.rejected_rows) == (3, 0)
    seen = []
    for i in range(3):
        r = await client.get(
            "/v1/profiles", params={"email": f"c{i}@example.com"}, headers=keys["admin"]
        )
        seen.append(r.json()["traits"])
    assert seen == [
        {"kids": 0, "code": "00123", "score": "1e3", "vip": True},
        {"kids": 1, "code": "007", "score": 0.5, "vip": False},
        {"kids": 2, "code": "+7", "score": -12, "vip": "yes"},
    ]
    assert [type(t["kids"]) for t in seen] == [int, int, int]  # 0 and 1 are not booleans
