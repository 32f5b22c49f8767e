"""Reading a `cdp import` file: its encoding, its CSV delimiter, and its rows in chunks.

Files come from CRMs, shops and spreadsheets. Excel saves a CSV for a Russian (or German,
French...) locale with `;` between columns, since `,` is the decimal separator there, and
often in Windows-1251 rather than UTF-8. So:
- the delimiter is read off the header: of `,` `;` tab and `|`, the one that splits it into the
  most columns the import knows (`known_column`); `,` when none does better. `--delimiter`
  overrides it.
- the encoding is UTF-8 (a byte order mark is skipped) unless `--encoding` names another. The
  whole file is checked before anything is imported: a file that is not in its encoding is
  refused, naming the first line that is not, and nothing of it is stored. (Before, such a file
  stopped the import with a traceback, after the rows before that line were stored.)
- a header that names a column twice is refused: one of the two values of every row would be
  lost; so is a JSON array where JSON lines are read.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from cdp.errors import TOO_DEEP, DomainError
from cdp.profiles.schemas import ProfileIn

DELIMITERS = (",", ";", "\t", "|")
_PLAIN_COLUMNS = frozenset(ProfileIn.__struct_fields__) - {"traits", "consents"}
_CHECK_BLOCK = 1 << 20

# A chunk: (CSV header or None for NDJSON, [(row number, row)]). A CSV row is its list of
# values (as csv.reader gives it; the worker pairs it with the header as csv.DictReader
# would), an NDJSON row its object; a line that is not a row (the csv module could not read
# it, or it is not a JSON object) is the reason instead.
Chunk = tuple[list[str] | None, list[tuple[int, Any]]]


class ImportFileError(DomainError):
    """The file cannot be read as given; nothing of it was imported."""

    title = "Unreadable file"


def is_json_lines(path: Path) -> bool:
    return path.suffix.lower() in (".ndjson", ".jsonl", ".json")


def python_encoding(encoding: str) -> str:
    """The codec to read with: UTF-8 skips a byte order mark. Raises ImportFileError for a
    name Python does not know."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def check_file(path: Path, encoding: str) -> int:
    """The file's lines; raises ImportFileError, before anything is imported, for a file that
    cannot be read as given: not in its encoding (`check_encoding`), or a JSON array where
    JSON lines are read (a pretty-printed array imported only its lines that happened to be
    whole objects)."""
    lines = check_encoding(path, encoding)
    if is_json_lines(path):
        with path.open("r", encoding=python_encoding(encoding)) as fh:
            for line in fh:
                if line.strip():
                    if line.lstrip().startswith("["):
                        raise ImportFileError(
                            "the file is a JSON array; cdp import reads JSON lines (NDJSON): "
                            "one object per line"
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


def known_column(name: str) -> bool:
    name = name.strip()
    return name in _PLAIN_COLUMNS or name.startswith(("traits.", "consent."))


def header_delimiter(header_line: str) -> str:
    """The delimiter that splits the header into the most known columns (`,` on a tie)."""
    best, best_known = ",", 0
    for delimiter in DELIMITERS:
        columns = next(csv.reader([header_line], delimiter=delimiter), [])
        known = sum(1 for name in columns if known_column(name))
        if known > best_known:
            best, best_known = delimiter, known
    return best


def read_chunks(
    path: Path, size: int, *, encoding: str = "utf-8", delimiter: str | None = None
) -> Iterator[Chunk]:
    """The file in chunks of `size` rows. Row numbers count data rows (blank lines skipped).
    Call `check_file` first: a decoding error here would stop the import midway."""
    rows: list[tuple[int, Any]] = []
    with path.open("r", encoding=python_encoding(encoding), newline="") as fh:
        header: list[str] | None = None
        if is_json_lines(path):
            lines: Iterator[tuple[int, Any]] = (
                (n, _json_object(line)) for n, line in enumerate(fh, start=1) if line.strip()
            )
        else:
            first = fh.readline()
            if not first:
                return
            reader = csv.reader(
                itertools.chain([first], fh),
                delimiter=delimiter or header_delimiter(first),
                strict=True,
            )
            header = next(reader, None)
            if header is None:
                return
            _refuse_repeated_columns(header)
            lines = enumerate((row for row in _csv_rows(reader) if row), start=1)
        for item in lines:
            rows.append(item)
            if len(rows) >= size:
                yield header, rows
                rows = []
    if rows:
        yield header, rows


def _csv_rows(reader: Any) -> Iterator[list[str] | str]:
    """The reader's rows; a row the csv module cannot read is the reason instead, naming its
    lines, and reading goes on at the next line. The reader is strict: a quote left open runs
    the row on over the lines after it until the next quote, and without `strict` the rows it
    swallowed were stored as one customer's value (another customer's email in a plaintext
    city); with it, that row ends in an error: `',' expected after '"'`, or at the end of the
    file `unexpected end of data`. A value over the module's 128 KiB limit is an error too."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            where = f"line {start}" if end <= start else f"lines {start}-{end}"
            yield f"not valid CSV at {where}: {exc}"
            continue
        yield row


def _refuse_repeated_columns(header: list[str]) -> None:
    """Two columns of one name would pair a row's values with the same key, and the first value
    would be lost without a word."""
    seen: set[str] = set()
    for name in header:
        if name in seen and name.strip():
            raise ImportFileError(f"the header names the column {name!r} twice")
        seen.add(name)


def _json_object(line: str) -> dict[str, Any] | str:
    """The line's object, or why it is none."""
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return "not valid JSON"
    except RecursionError:  # msgspec stops at Python's recursion limit
        return TOO_DEEP
    return obj if isinstance(obj, dict) else "not a JSON object"
