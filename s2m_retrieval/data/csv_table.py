"""The one CSV reader of labels.csv and query manifests: UTF-8 (with or without Excel's BOM), rows checked."""

from __future__ import annotations

import codecs
import csv
import os
from pathlib import Path

from s2m_retrieval.errors import BadInputError, S2MError


def read_table(path: str | os.PathLike, error: type[S2MError] = BadInputError
               ) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """(header, [(line number, row by column)]) of a CSV file; a column named twice, a row with more fields than
    the header, text that is not UTF-8 or a malformed file is one `error` line naming the file and line. Short
    rows get None cells; empty header cells name no column and may repeat."""
    path = Path(path)
    rows = []
    line = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in reader.fieldnames or []]
            _check_names(path, header, error)
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise error(f"{path} line {line}: {len(header) + len(row[None])} fields, the header has "
                                f"{len(header)} ({', '.join(header)}); quote values that hold commas")
                rows.append((line, row))
    except UnicodeDecodeError as exc:
        raise error(_not_utf8(path, exc)) from None
    except csv.Error as exc:
        raise error(f"{path} line {line + 1}: not a well-formed CSV file ({exc})") from None
    return header, rows


def _check_names(path: Path, header: list[str], error: type[S2MError]) -> None:
    # csv.DictReader keeps only the last of two columns of one name: the other's values would be lost silently.
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        if name and name in seen:
            raise error(f"{path} line 1: column {name!r} appears twice (columns {seen[name]} and {number}); "
                        "rename one")
        seen[name] = number


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """The message for a file that is not UTF-8, naming its first bad byte and that byte's line (the reader
    decodes in chunks, so the row it had reached says little)."""
    data = path.read_bytes()
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as whole:
        exc = whole
    line = exc.object.count(b"\n", 0, exc.start) + 1
    return (f"{path} line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); save it as UTF-8 "
            "(Excel: CSV UTF-8)")
