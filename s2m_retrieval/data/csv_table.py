"""The one CSV reader of labels.csv and query manifests: UTF-8 (with or without Excel's BOM), rows checked."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from s2m_retrieval.errors import BadInputError, S2MError


def read_table(path: str | os.PathLike, error: type[S2MError] = BadInputError
               ) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """(header, [(line number, row by column)]) of a CSV file; a row with more fields than the header, text that
    is not UTF-8 or a malformed file is one `error` line naming the file and line. Short rows get None cells."""
    path = Path(path)
    rows = []
    line = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise error(f"{path} line {line}: {len(header) + len(row[None])} fields, the header has "
                                f"{len(header)} ({', '.join(header)}); quote values that hold commas")
                rows.append((line, row))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} near line {line + 1}); save it "
                    "as UTF-8 (Excel: CSV UTF-8)") from None
    except csv.Error as exc:
        raise error(f"{path} line {line + 1}: not a well-formed CSV file ({exc})") from None
    return header, rows
