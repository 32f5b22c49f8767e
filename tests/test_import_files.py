"""`cdp import` reads the files customers have: Excel's `;` CSV, Windows-1251, tabs, a BOM."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp.db.tables import profiles
from cdp.import_file import ImportFileError, header_delimiter
from cdp.importer import run_import
from tests.helpers import count
from tests.test_import import run_cli

# What Excel saves for a Russian locale: semicolons, CRLF, Windows-1251.
EXCEL_RU = (
    "external_id;email;first_name;city;traits.ltv\r\n"
    "R1;anna@example.com;Анна;Москва;1234,5\r\n"
    'R2;ivan@example.com;"Иван; мл.";Казань;\r\n'
)


async def first_name(client, keys, email: str) -> str:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["first_name"]


async def test_a_russian_excel_csv_imports_with_its_encoding(platform, tmp_path, client, keys):
    src = tmp_path / "excel.csv"
    src.write_bytes(EXCEL_RU.encode("cp1251"))
    summary = await run_import(platform, src, "crm", encoding="cp1251")
    assert (summary.rows, summary.created, summary.rejected_rows) == (2, 2, 0)
    assert await first_name(client, keys, "anna@example.com") == "Анна"
    assert await first_name(client, keys, "ivan@example.com") == "Иван; мл."


async def test_a_file_not_in_its_encoding_is_refused_before_anything_is_stored(platform, tmp_path):
    src = tmp_path / "excel.csv"
    good = "".join(f"R{n};r{n}@example.com;Anna\r\n" for n in range(3000))
    tail = "R9;r9@example.com;Анна\r\n".encode("cp1251")
    src.write_bytes(b"external_id;email;first_name\r\n" + good.encode() + tail)
    with pytest.raises(ImportFileError) as caught:
        await run_import(platform, src, "crm")
    assert caught.value.detail.startswith("line 3002 is not valid utf-8")
    assert await count(platform, profiles) == 0


async def test_the_delimiter_is_read_off_the_header_or_given(platform, tmp_path):
    tabs = tmp_path / "shop.csv"
    tabs.write_text("external_id\temail\tcity\nT1\tt1@example.com\tOslo, Norway\n", "utf-8")
    assert (await run_import(platform, tabs, "shop")).created == 1
    forced = tmp_path / "forced.csv"
    forced.write_text("external_id|email\nP1|p1@example.com\n", "utf-8-sig")  # with a BOM
    assert (await run_import(platform, forced, "shop", delimiter="|")).created == 1
    assert await count(platform, profiles) == 2


def test_header_delimiter_picks_the_one_that_names_known_columns():
    assert header_delimiter("external_id;email;first_name\r\n") == ";"
    assert header_delimiter("email,phone\n") == ","
    assert header_delimiter('"notes; free text",email,phone\n') == ","
    assert header_delimiter("email\ttraits.a;b\tconsent.marketing.email\n") == "\t"
    assert header_delimiter("what;ever\n") == ","  # nothing known: the CSV default


async def test_cli_names_the_bad_line_and_takes_encoding(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both databases
    url = platform.settings.database_url
    src = tmp_path / "excel.csv"
    src.write_bytes(EXCEL_RU.encode("cp1251"))
    refused = run_cli(["import", str(src), "--source", "crm"], url, tmp_path)
    assert refused.returncode == 1
    assert "line 2 is not valid utf-8" in refused.stderr and "--encoding" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = run_cli(["import", str(src), "--source", "crm", "--encoding", "cp1251"], url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "created: 2" in done.stdout and "rejected rows: 0" in done.stdout


async def test_a_header_that_names_a_column_twice_is_refused(platform, tmp_path):
    src = tmp_path / "twice.csv"
    src.write_text("email,first_name,email\nwork@example.com,Anna,home@example.com\n", "utf-8")
    with pytest.raises(ImportFileError, match="'email' twice"):
        await run_import(platform, src, "crm")
    assert await count(platform, profiles) == 0


async def test_a_row_with_more_values_than_columns_is_rejected_not_cut(platform, tmp_path):
    """An unquoted comma in an address shifts every later value: the row is reported."""
    src = tmp_path / "shop.csv"
    src.write_text(
        "external_id,email,postal_address,city\n"
        'S1,s1@example.com,"ул. Ленина, 1",Moscow\n'
        "S2,s2@example.com,ул. Ленина, 2,Moscow\n"
        "S3,s3@example.com\n",  # a short row: the missing columns are empty
        "utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (3, 2, 1)
    assert summary.reasons == {"5 values for 4 columns (a delimiter inside an unquoted value?)": 1}


async def test_a_row_the_csv_module_cannot_read_is_rejected_and_the_rest_imported(
    platform, tmp_path
):
    src = tmp_path / "big.csv"
    src.write_text(
        "external_id,email,postal_address\n"
        f"B1,b1@example.com,{'x' * 200_000}\n"  # over the csv module's 128 KiB field limit
        "B2,b2@example.com,ok\n",
        "utf-8",
    )
    summary = await run_import(platform, src, "crm")
    assert (summary.rows, summary.created, summary.rejected_rows) == (2, 1, 1)
    [reason] = summary.reasons
    assert reason.startswith("not valid CSV at line 2: field larger than field limit")


async def test_a_quote_left_open_does_not_swallow_the_rows_after_it(
    platform, tmp_path, client, keys
):
    """Read leniently, Q1's city became "Moscow Q2,q2@example.com,Kazan": another customer's
    email stored in a plaintext column, and Q2 gone."""
    for name, text in (
        (
            "at_end.csv",
            'external_id,email,city\nQ1,q1@example.com,"Moscow\nQ2,q2@example.com,Kazan\n',
        ),
        (
            "midway.csv",
            'external_id,email,city\nQ1,q1@example.com,"Moscow\nQ2,q2@example.com,Kazan\n'
            'Q3,q3@example.com,"St. Petersburg"\nQ4,q4@example.com,Omsk\n',
        ),
    ):
        src = tmp_path / name
        src.write_text(text, "utf-8")
        summary = await run_import(platform, src, "crm")
        [reason] = summary.reasons
        assert reason.startswith("not valid CSV at lines 2-"), reason
        r = await client.get(
            "/v1/profiles", params={"email": "q1@example.com"}, headers=keys["admin"]
        )
        assert r.status_code == 404
    assert summary.created == 1  # Q4, after the broken row


async def test_ndjson_lines_that_are_not_objects_are_rejected_with_the_reason(platform, tmp_path):
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": "N1", "email": "n1@example.com"}\n'
        "not json\n"
        "[1, 2]\n"
        + '{"external_id": "N2", "traits": {"a": '
        + "[" * 5000
        + "]" * 5000
        + "}}\n"
        + '{"external_id": "N3", "email": "n3@example.com"}\n',
        "utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (5, 2, 3)
    assert summary.reasons == {"not valid JSON": 1, "not a JSON object": 1, "nested too deeply": 1}


async def test_a_json_array_is_refused_not_imported_line_by_line(platform, tmp_path):
    """Read as JSON lines, a pretty-printed array imported only its last object (the others
    end in a comma)."""
    src = tmp_path / "customers.json"
    src.write_text(
        '[\n  {"external_id": "J1", "email": "j1@example.com"},\n'
        '  {"external_id": "J2", "email": "j2@example.com"}\n]\n',
        "utf-8",
    )
    with pytest.raises(ImportFileError, match="JSON array"):
        await run_import(platform, src, "shop")
    assert await count(platform, profiles) == 0


async def test_the_file_is_read_through_once_before_the_import_and_sizes_its_progress(
    platform, tmp_path
):
    told: list[int] = []
    src = tmp_path / "crm.csv"
    src.write_text("external_id,email\nA1,a1@example.com\nA2,a2@example.com", "utf-8")
    summary = await run_import(platform, src, "crm", on_total=told.append)
    assert told == [2] and summary.rows == 2  # the header is not a row; no final line break
    lines = tmp_path / "shop.ndjson"
    lines.write_text('{"external_id": "N1"}\n{"external_id": "N2"}\n', "utf-8")
    await run_import(platform, lines, "shop", on_total=told.append)
    assert told == [2, 2]


async def test_header_names_are_matched_whatever_their_case_and_spaces(
    platform, tmp_path, client, keys
):
    """As Excel users write them, with the delimiter Excel leaves at the end of each line."""
    src = tmp_path / "excel.csv"
    src.write_text(
        "Email; Phone ;First_Name;Traits.Tier;\r\nanna@example.com;+7 916 123-45-67;Анна;gold;\r\n",
        "utf-8",
    )
    summary = await run_import(platform, src, "crm")
    assert (summary.created, summary.rejected_rows) == (1, 0)
    r = await client.get("/v1/profiles", params={"phone": "+79161234567"}, headers=keys["admin"])
    assert r.json()["first_name"] == "Анна" and r.json()["traits"] == {"Tier": "gold"}


async def refused(platform, path, **options) -> str:  # type: ignore[no-untyped-def]
    """The refusal of the file: raised before anything is stored or a rejects file written."""
    with pytest.raises(ImportFileError) as caught:
        await run_import(platform, path, "crm", **options)
    assert await count(platform, profiles) == 0
    assert not path.with_name(path.name + ".rejects.csv").exists()
    return caught.value.detail


async def test_a_header_with_no_known_column_is_refused_saying_what_it_found(platform, tmp_path):
    src = tmp_path / "excel.csv"
    src.write_text("Email;Phone;First_name\r\nanna@example.com;+79161234567;Anna\r\n", "utf-8")
    said = await refused(platform, src, delimiter=",")
    assert "no column cdp import knows" in said and "'Email;Phone;First_name'" in said
    assert "the delimiter ',' of --delimiter" in said
    foreign = tmp_path / "orders.csv"
    foreign.write_text("order;amount\n1;20\n", "utf-8")
    said = await refused(platform, foreign)
    assert "'order', 'amount'" in said and "',' ';' tab '|'" in said
    headless = tmp_path / "headless.csv"  # no header row: its first row is a customer's data
    headless.write_text("anna@example.com;+79161234567\nivan@example.com;\n", "utf-8")
    said = await refused(platform, headless)
    assert "looks like a customer's data" in said and "anna" not in said and "7916" not in said


async def test_a_column_the_import_does_not_know_is_refused_up_front(platform, tmp_path):
    """Before, every row was rejected for it, one line of the rejects file each."""
    src = tmp_path / "crm.csv"
    src.write_text("email,comment,consent.marketing\na@example.com,called twice,granted\n", "utf-8")
    said = await refused(platform, src)
    assert "2 columns cdp import does not know: 'comment', 'consent.marketing'" in said
    assert "called twice" not in said


async def test_an_excel_workbook_is_refused_as_one(platform, tmp_path):
    """Before, an .xlsx was 'not valid utf-8 ... (a Russian Excel file is often cp1251)'."""
    for name, magic in (("crm.xlsx", b"PK\x03\x04"), ("crm.csv", b"\xd0\xcf\x11\xe0\xa1\xb1")):
        src = tmp_path / name
        src.write_bytes(magic + bytes(range(256)) * 4)
        for encoding in ("utf-8", "cp1251"):
            said = await refused(platform, src, encoding=encoding)
            assert said == "the file is an Excel workbook: save it as CSV (UTF-8)"


async def test_cli_refuses_a_bad_header_with_one_error_line(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both databases
    src = tmp_path / "crm.csv"
    src.write_text("email,comment\na@example.com,vip\n", "utf-8")
    out = run_cli(["import", str(src), "--source", "crm"], platform.settings.database_url, tmp_path)
    assert out.returncode == 1
    [error] = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert "does not know: 'comment'" in error and "Traceback" not in out.stderr
    assert await count(platform, profiles) == 0


async def test_rejects_name_the_line_of_the_file_as_an_editor_shows_it(platform, tmp_path):
    """The header is line 1; a blank line and a value over two lines count as the file does;
    a row is named by the line it starts on, like the 'not valid CSV at line N' reasons."""
    src = tmp_path / "crm.csv"
    src.write_text(
        "external_id,email,postal_address\n"  # line 1
        "A1,a1@example.com\n"  # 2
        "\n"  # 3
        'A2,a2@example.com,"ул. Ленина, 5\nкв. 12"\n'  # 4-5
        "A3,not-an-email\n"  # 6
        'A4,a4@example.com,"x"y\n'  # 7: not valid CSV
        "A5,also-not-an-email\n",  # 8
        "utf-8",
    )
    summary = await run_import(platform, src, "crm")
    rejects = summary.rejects_path.read_text("utf-8").splitlines()
    assert rejects[0] == "row,field,reason"
    assert [line.split(",")[0] for line in rejects[1:]] == ["6", "7", "8"]
    assert "not valid CSV at line 7" in rejects[2]
    lines = tmp_path / "shop.ndjson"
    lines.write_text('{"email": "n1@example.com"}\n\n{"email": "bad"}\n', "utf-8")
    summary = await run_import(platform, lines, "shop")
    assert summary.rejects_path.read_text("utf-8").splitlines()[1].startswith("3,email,")


async def test_a_value_under_a_column_without_a_name_rejects_its_row(platform, tmp_path):
    src = tmp_path / "crm.csv"
    src.write_text("external_id;email;\nU1;u1@example.com;\nU2;u2@example.com;VIP\n", "utf-8")
    summary = await run_import(platform, src, "crm")
    assert (summary.created, summary.rejected_rows) == (1, 1)
    assert summary.reasons == {"a value in a column the header gives no name": 1}


async def test_a_json_line_naming_a_key_twice_is_rejected_not_cut(platform, tmp_path):
    """A JSON decoder keeps the last of two values: the first email was lost without a word."""
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": "D1", "email": "work@example.com", "email": "home@example.com"}\n'
        '{"external_id": "D2", "traits": {"tier": "gold", "tier" : "silver"}}\n'
        '{"external_id": "D3", "city": "Omsk \\": x"}\n',  # '":' inside a value is no key
        "utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (3, 1, 2)
    rejects = summary.rejects_path.read_text("utf-8").splitlines()[1:]
    assert rejects == [
        "1,row,names the key 'email' twice (one of its values would be lost)",
        "2,row,names the key 'tier' twice (one of its values would be lost)",
    ]


async def test_a_json_line_with_traits_or_consents_of_the_wrong_shape_is_rejected(
    platform, tmp_path
):
    """Before, traits that were not an object stopped the import with a traceback (or, as a list
    of pairs, were taken as an object the API refuses), consents that were not a list beside a
    consent key did too, and a consent key naming no channel was dropped without a word."""
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": "W1", "traits": "vip"}\n'
        '{"external_id": "W2", "traits": [["tier", "gold"]]}\n'
        '{"external_id": "W3", "consents": {}, "consent.marketing.sms": "withdrawn"}\n'
        '{"external_id": "W4", "consent.marketing": "withdrawn"}\n'
        '{"external_id": "W5", "traits": {"tier": "gold"}, "traits.vip": true}\n',
        "utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (5, 1, 4)
    rejects = summary.rejects_path.read_text("utf-8").splitlines()[1:]
    assert [",".join(line.split(",")[:2]) for line in rejects] == [
        "1,traits",
        "2,traits",
        "3,consents",
        "4,consent.marketing",
    ]


async def test_a_json_line_giving_one_trait_twice_is_rejected_naming_it(
    platform, tmp_path, client, keys
):
    """A line with `"traits": {"tier": "gold"}` and `"traits.tier": "silver"` kept the flat
    key's value and dropped the other without a word; the same trait given once each way, or
    the two giving the same value, is one trait."""
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": "T1", "traits": {"tier": "gold"}, "traits.tier": "silver"}\n'
        '{"external_id": "T2", "traits": {"tier": "gold"}, "traits.vip": true}\n'
        '{"external_id": "T3", "traits": {"tier": "gold"}, "traits.tier": "gold"}\n',
        "utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (3, 2, 1)
    rejects = summary.rejects_path.read_text("utf-8").splitlines()[1:]
    assert [line.split(",")[:2] for line in rejects] == [["1", "traits.tier"]]
    assert "given twice" in rejects[0]
    assert "gold" not in rejects[0] and "silver" not in rejects[0]
    for external_id, traits in (("T2", {"tier": "gold", "vip": True}), ("T3", {"tier": "gold"})):
        r = await client.get(
            "/v1/profiles",
            params={"source": "shop", "external_id": external_id},
            headers=keys["admin"],
        )
        assert r.status_code == 200, r.text
        assert r.json()["traits"] == traits


async def test_the_file_to_import_is_never_its_own_rejects_file(platform, tmp_path, monkeypatch):
    """`--rejects crm.csv` for crm.csv emptied the customer file before a row was read, and the
    import answered 0 rows without a word."""
    src = tmp_path / "crm.csv"
    text = "email,first_name\nr1@example.com,Anna\nnot-an-email,Boris\n"
    src.write_text(text, "utf-8")
    monkeypatch.chdir(tmp_path)  # named as a user names it, relative to where they are
    with pytest.raises(ImportFileError, match="rejects file is the file to import"):
        await run_import(platform, src, "crm", rejects_path=Path("crm.csv"))
    assert src.read_text("utf-8") == text
    assert await count(platform, profiles) == 0
