"""Nothing we hold is lost silently: for any file `cdp import` accepts, every row is imported
or reported in the rejects file with its line, once; the summary agrees with the rejects file
and with what is stored; a file refused up front stores nothing. Files are generated (hypothesis)
from a model that knows, for each row, which line it starts on and whether it must be imported,
must be rejected, or may be either (but must be one of them)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.db.tables import profiles
from cdp.import_file import DELIMITERS, ImportFileError
from cdp.importer import run_import
from tests.helpers import count, hypothesis_on_loop

IMPORT, REJECT, EITHER = "import", "reject", "either"
PARTLY = "partly"  # imported, with a part of it (a grant, an identifier) reported
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ids = itertools.count()
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

NAME = st.text(alphabet="Анна Иванова Ёё\"',;|\t\n", max_size=12)


def fresh() -> tuple[str, str]:
    n = next(_ids)
    return f"X-{n}", f"Row.{n}@Example.com"


# CSV rows: (kind, expected outcome)
CSV_ROW = st.sampled_from(
    [
        "good",
        "good",
        "bad_email",
        "too_many",
        "nul",
        "unnamed",
        "no_id",
        "too_long",
        "huge",
        "blank",
        "spaces",
        "again",
    ]
)


def csv_row(kind: str, name: str, width: int) -> tuple[list[str] | str, str | None]:
    """The row's values (or a raw line), and what must become of it (None: not a row)."""
    ext, email = fresh()
    if kind == "good":
        return [ext, email, name], IMPORT
    if kind == "bad_email":
        return [ext, f"not-an-email-{ext}", name], REJECT
    if kind == "too_many":
        return [ext, email, name] + ["x"] * (width - 2), REJECT
    if kind == "nul":
        return [ext, email, name + "\x00"], REJECT
    if kind == "unnamed":
        return [ext, email, name, "VIP"], REJECT
    if kind == "no_id":
        return ["", "", name or "Анна"], REJECT
    if kind == "too_long":
        return [ext, email, "Я" * 201], REJECT
    if kind == "huge":
        return [ext, email, "Я" * 140_000], REJECT  # over the csv module's field limit
    if kind == "spaces":
        return "   ", REJECT  # a row of one blank-looking value: reported, not skipped
    return "", None  # a blank line is not a row


@st.composite
def csv_files(draw):  # type: ignore[no-untyped-def]
    delimiter = draw(st.sampled_from(DELIMITERS))
    unnamed = draw(st.booleans())  # Excel's delimiter at the end of every line
    width = 4 if unnamed else 3
    terminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))  # "\r": a classic Mac
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    if terminator == "\r":  # the writer would leave a "\n" in a value unquoted: a line break
        quoting = csv.QUOTE_ALL
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1251"]))
    kinds = draw(st.lists(st.tuples(CSV_ROW, NAME), max_size=8))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=terminator, quoting=quoting)
    writer.writerow(["External_ID ", "email", "first_name"] + ([""] if unnamed else []))
    expected: dict[int, str] = {}
    earlier: list[list[str]] = []  # the rows imported so far
    joined = 0
    for kind, name in kinds:
        if kind == "unnamed" and not unnamed:
            kind = "too_many"
        if kind == "again" and earlier:  # the same customer, written another way: joins
            ext, email = earlier[-1][:2]
            values, outcome = [ext, f" {email.upper()} ", name], IMPORT
            joined += 1
        else:
            values, outcome = csv_row("good" if kind == "again" else kind, name, width)
            if outcome == IMPORT:
                earlier.append(values)  # type: ignore[arg-type]
        line = len(LINE_BREAK.findall(buf.getvalue())) + 1  # as an editor counts lines
        if isinstance(values, str):
            buf.write(values + terminator)
        else:
            if unnamed and kind not in ("unnamed", "too_many"):
                values = [*values, ""]
            writer.writerow(values)
        if outcome is not None:
            expected[line] = outcome
    return buf.getvalue(), encoding, expected, joined


NDJSON_LINE = st.sampled_from(
    [
        "good",
        "good",
        "bad_email",
        "invalid",
        "array",
        "number",
        "null",
        "string",
        "blank",
        "deep",
        "huge_int",
        "huge_float",
        "dup_key",
        "nul",
        "nested_good",
        "unknown_key",
        "traits_not_object",
        "traits_text",
        "consents_not_list",
        "consent_half_named",
        "placeholder",
        "bad_grant",
    ]
)


def ndjson_line(kind: str, name: str) -> tuple[str, str | None]:
    ext, email = fresh()
    good = {"external_id": ext, "email": email, "first_name": name}
    if kind == "good":
        return json.dumps(good, ensure_ascii=False), IMPORT
    if kind == "nested_good":
        return json.dumps({**good, "traits": {"tier": "gold", "n": 3}}), IMPORT
    if kind == "bad_email":
        return json.dumps({**good, "email": "nobody"}), REJECT
    if kind == "invalid":
        return json.dumps(good)[:-1], REJECT
    if kind == "array":
        return json.dumps([good]), REJECT
    if kind == "number":
        return "42", REJECT
    if kind == "null":
        return "null", REJECT
    if kind == "string":
        return json.dumps(email), REJECT
    if kind == "deep":
        deep = "[" * 5000 + "]" * 5000
        return f'{{"email": "{email}", "traits": {{"a": {deep}}}}}', REJECT
    if kind == "huge_int":
        return json.dumps({**good, "traits": {"n": 10**40}}), EITHER
    if kind == "huge_float":
        return json.dumps(good)[:-1] + ', "traits": {"n": 1e400}}', EITHER
    if kind == "dup_key":  # one of the two emails would be lost without a word
        return json.dumps(good)[:-1] + f', "email": "other.{email}"}}', REJECT
    if kind == "nul":
        return json.dumps({**good, "first_name": name + "\x00"}), REJECT
    if kind == "unknown_key":
        return json.dumps({**good, "comment": "call back"}), REJECT
    if kind == "placeholder":  # an address that never links: the row is kept without it
        return json.dumps({"external_id": ext, "email": "test@test.com"}), PARTLY
    if kind == "bad_grant":  # a grant without its wording: the profile is kept without it
        return json.dumps({**good, "consent.marketing.email": "granted"}), PARTLY
    if kind == "traits_not_object":  # the API refuses each as it is
        return json.dumps({**good, "traits": [["tier", "gold"]]}), REJECT
    if kind == "traits_text":
        return json.dumps({**good, "traits": "vip"}), REJECT
    if kind == "consents_not_list":
        flat = {"consent.marketing.email": "granted", "consents": {"marketing": "granted"}}
        return json.dumps({**good, **flat}), REJECT
    if kind == "consent_half_named":
        return json.dumps({**good, "consent.marketing": "granted"}), REJECT
    return (" \t" if name else ""), None  # a blank line (or one of spaces) is not a row


@st.composite
def ndjson_files(draw):  # type: ignore[no-untyped-def]
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    kinds = draw(st.lists(st.tuples(NDJSON_LINE, NAME.filter(lambda s: "\n" not in s)), max_size=8))
    out: list[str] = []
    expected: dict[int, str] = {}
    for i, (kind, name) in enumerate(kinds, start=1):
        line, outcome = ndjson_line(kind, name)
        out.append(line)
        if outcome is not None:
            expected[i] = outcome
    text = terminator.join(out) + draw(st.sampled_from(["", terminator]))
    return text, draw(st.sampled_from(["utf-8", "utf-8-sig"])), expected, 0


async def import_and_account(platform, path, text, encoding, expected, joined) -> None:  # type: ignore[no-untyped-def]
    path.write_bytes(text.encode(encoding, errors="strict"))
    before = await count(platform, profiles)
    try:
        summary = await run_import(platform, path, "crm", encoding=encoding.replace("-sig", ""))
    except ImportFileError:
        assert await count(platform, profiles) == before, "a refused file stored something"
        first = next((line for line in text.splitlines() if line.strip()), "")
        assert path.suffix == ".ndjson" and first.lstrip().startswith("["), text[:200]
        return
    with summary.rejects_path.open(encoding="utf-8", newline="") as fh:
        rejects = list(csv.reader(fh))
    assert rejects[0] == ["row", "field", "reason"]
    rejected_lines = [int(row[0]) for row in rejects[1:]]
    # every line of the rejects file is one the summary counted, under its reason
    assert sum(summary.reasons.values()) == len(rejected_lines)
    assert set(rejected_lines) <= set(expected), (rejected_lines, expected)
    for line, outcome in expected.items():
        if outcome == IMPORT:
            assert line not in rejected_lines, (line, rejects)
        elif outcome in (REJECT, PARTLY):
            assert line in rejected_lines, (line, rejects)
    # every row counted once: imported or rejected, and what was created is stored
    assert summary.rows == len(expected)
    assert summary.joined == joined  # the rows naming a customer of an earlier row
    assert summary.created + summary.joined + summary.rejected_rows == summary.rows
    partly = {line for line, outcome in expected.items() if outcome == PARTLY}
    assert summary.rejected_rows == len(set(rejected_lines) - partly)
    parts = summary.consents_rejected + summary.identifiers_ignored
    assert sum(n in partly for n in rejected_lines) == parts
    assert await count(platform, profiles) - before == summary.created


async def test_every_csv_row_is_imported_or_reported_once(platform, tmp_path):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(csv_files())
        def example(file) -> None:  # type: ignore[no-untyped-def]
            path = tmp_path / f"crm-{next(_ids)}.csv"
            run(import_and_account(platform, path, *file))

        example()

    await hypothesis_on_loop(test)


async def test_every_ndjson_line_is_imported_or_reported_once(platform, tmp_path):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(ndjson_files())
        def example(file) -> None:  # type: ignore[no-untyped-def]
            path = tmp_path / f"crm-{next(_ids)}.ndjson"
            run(import_and_account(platform, path, *file))

        example()

    await hypothesis_on_loop(test)


async def import_anything(platform, path, data: bytes) -> None:  # type: ignore[no-untyped-def]
    path.write_bytes(data)
    before = await count(platform, profiles)
    try:
        summary = await run_import(platform, path, "crm")
    except ImportFileError:
        assert await count(platform, profiles) == before, "a refused file stored something"
        return
    with summary.rejects_path.open(encoding="utf-8", newline="") as fh:
        rejected_lines = [int(row[0]) for row in list(csv.reader(fh))[1:]]
    assert sum(summary.reasons.values()) == len(rejected_lines)
    assert summary.created + summary.joined + summary.rejected_rows == summary.rows
    assert len(set(rejected_lines)) >= summary.rejected_rows
    first_row = 1 if path.suffix == ".ndjson" else 2
    assert all(first_row <= n <= data.count(b"\n") + data.count(b"\r") + 1 for n in rejected_lines)
    assert await count(platform, profiles) - before == summary.created


CSV_TEXT = st.text(alphabet='a@x.,;|\t"\r\n\x00 Я\ufeff', max_size=40)
NDJSON_TEXT = st.text(alphabet='{}[]":, \r\n\x00\\ea@x.1Я', max_size=40)


async def test_any_file_is_refused_whole_or_accounted_for(platform, tmp_path):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(
            st.sampled_from(["csv", "ndjson"]),
            st.sampled_from(["email,first_name\n", "email;first_name;\r\n", ""]),
            st.one_of(CSV_TEXT, NDJSON_TEXT).map(lambda s: s.encode()),
            st.binary(max_size=4),
        )
        def example(suffix: str, header: str, body: bytes, junk: bytes) -> None:
            path = tmp_path / f"any-{next(_ids)}.{suffix}"
            run(import_anything(platform, path, header.encode() + body + junk))

        example()

    await hypothesis_on_loop(test)


SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SCALAR.map(str), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["email", "phone", "external_id", "first_name", "city", "country", "birth_date"]
KEYS = st.sampled_from(
    [*FIELDS, "traits", "consents", "traits.tier", "consent.marketing.email", "consent.marketing"]
)


async def test_any_json_object_line_is_imported_or_rejected(platform, tmp_path):
    """Values of any JSON type under the keys a line may have: the import never stops."""

    def test(run) -> None:  # type: ignore[no-untyped-def]
        @SETTINGS
        @given(st.lists(st.dictionaries(KEYS, JSON_VALUE, max_size=4), min_size=1, max_size=5))
        def example(objects: list[dict]) -> None:
            path = tmp_path / f"any-{next(_ids)}.ndjson"
            lines = "\n".join(json.dumps({"external_id": "J", **o}) for o in objects)
            run(import_anything(platform, path, lines.encode()))

        example()

    await hypothesis_on_loop(test)
