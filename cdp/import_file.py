"""Reading a `cdp import` file: its encoding, its CSV delimiter, and its rows in chunks.

Files come from CRMs, shops and spreadsheets. Excel saves a CSV for a Russian (or German,
French...) locale with `;` between columns, since `,` is the decimal separator there, and
often in Windows-1251 rather than UTF-8. So:
- the header's names are matched without regard to case or surrounding spaces (`Email`,
  ` phone `, `First_Name`; a trait's name is kept as written: `Traits.VIP` is the trait `VIP`).
  The delimiter is read off the header: of `,` `;` tab and `|`, the one that splits it into the
  most columns the import knows (`column_key`); `,` when none does better. `--delimiter`
  overrides it.
- the encoding is UTF-8 (a byte order mark is skipped) unless `--encoding` names another. The
  whole file is checked before anything is imported: a file that is not in its encoding is
  refused, naming the first line that is not, and nothing of it is stored. (Before, such a file
  stopped the import with a traceback, after the rows before that line were stored.)
- the header is checked before anything is imported, and refused (ImportFileError) when it
  names no column the import knows (the wrong delimiter, or not a customer file), names a
  column it does not know (`comment`: POST /v1/profiles refuses unknown fields, and every row
  was rejected for it), or names a column twice (one of the two values of every row would be
  lost). So is a JSON array where JSON lines are read, and an Excel workbook (`.xlsx` or
  `.xls`; any zip or OLE file), which is not text at all.
- a JSON line that names a key twice (`{"email": ..., "email": ...}`) is rejected
  (`cdp.json_keys`): a JSON decoder keeps the last value, and the first was lost without a word.
- rows are numbered by the line of the file where they start, as a text editor or a
  spreadsheet shows them: a CSV's header is line 1, its first row line 2.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from cdp.errors import TOO_DEEP, DomainError, repeatable
from cdp.json_keys import duplicate_key
from cdp.profiles.schemas import ProfileIn

DELIMITERS = (",", ";", "\t", "|")
_PLAIN_COLUMNS = frozenset(ProfileIn.__struct_fields__) - {"traits", "consents"}
CONSENT_PARTS = ("wording_id", "method", "occurred_at")
COLUMNS_HELP = (
    "Columns are the POST /v1/profiles fields, traits.<name> (name a trait so) and "
    "consent.<purpose>.<channel> (with .wording_id, .method, .occurred_at)"
)
_CHECK_BLOCK = 1 << 20
# The first bytes of a zip file (an .xlsx) and of an OLE compound file (an .xls)
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")

# A chunk: (CSV header or None for NDJSON, [(line number, row)]). A CSV header holds the keys
# its columns stand for (`column_key`; "" for a column without a name). A CSV row is its list
# of values (as csv.reader gives it; the worker pairs it with the header as csv.DictReader
# would), an NDJSON row its object; a line that is not a row (the csv module could not read
# it, or it is not a JSON object) is the reason instead.
Chunk = tuple[list[str] | None, list[tuple[int, Any]]]


class ImportFileError(DomainError):
    """The file cannot be read as given; nothing of it was imported."""

    title = "Unreadable file"


@dataclass(frozen=True, slots=True)
class Columns:
    """What a kind of file may hold: the key each CSV column stands for (None: unknown), the
    command that reads it (for messages) and the help naming its columns."""

    key: Callable[[str], str | None]
    command: str
    help: str


def is_json_lines(path: Path) -> bool:
    return path.suffix.lower() in (".ndjson", ".jsonl", ".json")


def rows_at_most(path: Path, lines: int) -> int:
    """How many rows a checked file of `lines` lines holds at most (less a CSV's header)."""
    return max(lines - (0 if is_json_lines(path) else 1), 0)


REJECTS_HEADER = ("row", "field", "reason")


def rejects_file(path: Path, rejects_path: Path | None) -> Path:
    """Where the rejected rows of an import of `path` go: `rejects_path`, else FILE.rejects.csv.
    Raises ImportFileError for the file to import itself: opened for writing, it would be
    emptied before a row was read, and the customer file lost."""
    rejects = rejects_path or path.with_name(path.name + ".rejects.csv")
    if rejects.exists() and rejects.samefile(path):
        raise ImportFileError("the rejects file is the file to import: name another one")
    return rejects


def open_rejects(rejects: Path) -> IO[str]:
    """The rejects file, emptied and opened for writing, readable and writable by its owner
    only (0600) whatever the umask, and made so where it already existed: it lies beside a
    customer file and says which of its lines were refused and why. Not a regular file (such
    as `--rejects /dev/stdout` or `/dev/null`): left as it is."""
    fd = os.open(rejects, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        return open(fd, "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(fd)
        raise


def python_encoding(encoding: str) -> str:
    """The codec to read with: UTF-8 skips a byte order mark. Raises ImportFileError for a
    name Python does not know."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def check_file(
    path: Path, encoding: str, delimiter: str | None = None, columns: Columns | None = None
) -> int:
    """The file's lines; raises ImportFileError, before anything is imported, for a file that
    cannot be read as given: an Excel workbook, not in its encoding (`check_encoding`), a CSV
    whose header `csv_header` refuses, or a JSON array where JSON lines are read (a
    pretty-printed array imported only its lines that happened to be whole objects)."""
    with path.open("rb") as fh:
        if fh.read(4) in _WORKBOOK_MAGIC:
            raise ImportFileError("the file is an Excel workbook: save it as CSV (UTF-8)")
    lines = check_encoding(path, encoding)
    with path.open("r", encoding=python_encoding(encoding), newline="") as fh:
        if not is_json_lines(path):
            csv_header(fh, delimiter, columns)
            return lines
        for line in fh:
            if line.strip():
                if line.lstrip().startswith("["):
                    raise ImportFileError(
                        f"the file is a JSON array; {(columns or PROFILE_COLUMNS).command} "
                        "reads JSON lines (NDJSON): one object per line"
                    )
                break
    return lines


def check_encoding(path: Path, encoding: str) -> int:
    """The file's lines (the last one counts without its line break); raises ImportFileError
    naming the first line of the file that is not valid `encoding`."""
    decoder = codecs.getincrementaldecoder(python_encoding(encoding))()
    line, last = 1, b"\n"
    with path.open("rb") as fh:
        while True:
            block = fh.read(_CHECK_BLOCK)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line += block.count(b"\n", 0, max(exc.start, 0))
                raise ImportFileError(
                    f"line {line} is not valid {encoding}: save the file as UTF-8, or name its "
                    "encoding with --encoding (a Russian Excel file is often cp1251)"
                ) from None
            if not block:
                return line - 1 if last == b"\n" else line
            line += block.count(b"\n")
            last = block[-1:]


def column_key(name: str) -> str | None:
    """The record key a CSV column stands for, or None for a column the import does not know:
    a POST /v1/profiles field, `traits.<name>` or `consent.<purpose>.<channel>[.<part>]`,
    matched without regard to case or surrounding spaces. A trait keeps its name as written."""
    name = name.strip()
    low = name.lower()
    if low in _PLAIN_COLUMNS:
        return low
    if low.startswith("traits.") and name[7:]:
        return "traits." + name[7:]
    parts = low.split(".")
    if parts[0] == "consent" and len(parts) in (3, 4) and all(parts):
        return low if len(parts) == 3 or parts[3] in CONSENT_PARTS else None
    return None


PROFILE_COLUMNS = Columns(column_key, "cdp import", COLUMNS_HELP)


def header_delimiter(header_line: str, columns: Columns | None = None) -> str:
    """The delimiter that splits the header into the most known columns (`,` on a tie)."""
    key = (columns or PROFILE_COLUMNS).key
    best, best_known = ",", 0
    for delimiter in DELIMITERS:
        known = sum(1 for name in _split(header_line, delimiter) if key(name))
        if known > best_known:
            best, best_known = delimiter, known
    return best


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def csv_header(
    fh: Any, delimiter: str | None, columns: Columns | None = None
) -> tuple[Any, list[str]] | None:
    """A csv.reader over the open file, and its header as the keys its columns stand for
    (`column_key`), read with `delimiter` (None: `header_delimiter`); None for an empty file.
    Raises ImportFileError for a header that names no known column, names a column the import
    does not know, or names one twice. A column without a name is allowed (Excel writes a
    delimiter at the end of each line); a row with a value under it is rejected."""
    cols = columns or PROFILE_COLUMNS
    first = fh.readline()
    if not first:
        return None
    chosen = delimiter or header_delimiter(first, cols)
    reader = csv.reader(itertools.chain([first], fh), delimiter=chosen, strict=True)
    try:
        names = next(reader)
    except csv.Error as exc:
        raise ImportFileError(f"the header (line 1) is not valid CSV: {exc}") from None
    keys = [cols.key(name) if name.strip() else "" for name in names]
    if not any(keys):
        if delimiter:
            tried = f"the delimiter {_shown(chosen)} of --delimiter"
        else:
            tried = f"tried the delimiters {' '.join(map(_shown, DELIMITERS))}"
            chosen = max(DELIMITERS, key=lambda d: len(_split(first, d)))  # the most telling
            names = _split(first, chosen)
        raise ImportFileError(
            f"the header names no column {cols.command} knows ({tried}); "
            f"{_found(names, chosen)}. Is line 1 a header row? {cols.help}"
        )
    unknown = [name.strip() for name, key in zip(names, keys, strict=True) if key is None]
    if unknown:
        shown = [repr(name) if repeatable(name) else "(one not repeated)" for name in unknown]
        raise ImportFileError(
            f"the header names {_columns(len(unknown))} {cols.command} does not know: "
            f"{', '.join(shown[:20])}. Remove {'it' if len(unknown) == 1 else 'them'}. "
            f"{cols.help}"
        )
    header = [key or "" for key in keys]
    seen: set[str] = set()
    for key in header:  # one of each row's two values would be lost without a word
        if key in seen and key:
            raise ImportFileError(f"the header names the column {key!r} twice")
        seen.add(key)
    return reader, header


def _shown(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _columns(n: int) -> str:
    return f"{n} column" if n == 1 else f"{n} columns"


def _found(names: list[str], delimiter: str) -> str:
    """What the header holds, read with `delimiter`: its names, unless it looks like a row of
    customer data (an email address or a phone number), which an error must not repeat."""
    if not any(name.strip() for name in names):
        return "line 1 is empty"
    what = f"split by {_shown(delimiter)} it has {_columns(len(names))}"
    if any("@" in name or sum(ch.isdigit() for ch in name) >= 5 for name in names):
        return what + " and looks like a customer's data, not column names"
    return what + ": " + ", ".join(repr(name.strip()[:60]) for name in names[:20])


def read_chunks(
    path: Path,
    size: int,
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    columns: Columns | None = None,
) -> Iterator[Chunk]:
    """The file in chunks of `size` rows, each numbered by the line of the file where it starts
    (blank lines skipped). Call `check_file` first: a decoding error here would stop the
    import midway."""
    rows: list[tuple[int, Any]] = []
    with path.open("r", encoding=python_encoding(encoding), newline="") as fh:
        header: list[str] | None = None
        if is_json_lines(path):
            lines: Iterator[tuple[int, Any]] = (
                (n, _json_object(line)) for n, line in enumerate(fh, start=1) if line.strip()
            )
        else:
            opened = csv_header(fh, delimiter, columns)
            if opened is None:
                return
            reader, header = opened
            lines = ((n, row) for n, row in _csv_rows(reader) if row)
        for item in lines:
            rows.append(item)
            if len(rows) >= size:
                yield header, rows
                rows = []
    if rows:
        yield header, rows


def _csv_rows(reader: Any) -> Iterator[tuple[int, list[str] | str]]:
    """The reader's rows, each with the line it starts on; a row the csv module cannot read is
    the reason instead, naming its lines, and reading goes on at the next line. The reader is
    strict: a quote left open runs the row on over the lines after it until the next quote, and
    without `strict` the rows it swallowed were stored as one customer's value (another
    customer's email in a plaintext city); with it, that row ends in an error: `',' expected
    after '"'`, or at the end of the file `unexpected end of data`. A value over the module's
    128 KiB limit is an error too."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            where = f"line {start}" if end <= start else f"lines {start}-{end}"
            yield start, f"not valid CSV at {where}: {exc}"
            continue
        yield start, row


def _json_object(line: str) -> dict[str, Any] | str:
    """The line's object, or why it is none (`cdp.json_keys`: not one naming a key twice)."""
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return "not valid JSON"
    except RecursionError:  # msgspec stops at Python's recursion limit
        return TOO_DEEP
    if not isinstance(obj, dict):
        return "not a JSON object"
    return duplicate_key(line, obj) or obj
