"""`--where` metadata filters: parse `col>=v, col!=w AND ...`; label values read in SQL, compared in numpy.

Syntax: conditions `column OP value` with OP one of = != >= <= > <, joined by commas or AND. A value that
parses as a number is compared as a number, anything else (or a quoted value) as text. A condition holds
only where the image's labels have that column with a value of the compared type (JSON number or string):
rows without the column, or with another type, match no condition, `!=` included.

Values are read from the images.labels JSON in SQL, one key at a time, with each backend's JSON functions
(SQLite's JSON1 `json_type` / `json_extract`, PostgreSQL's `jsonb_typeof` / `->>`: the same result on both);
the comparisons then run in numpy on those columns, which `LabelFilter` keeps for the engine's next queries.
The matching ids become the FAISS id selector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.query.options import option_name

OPS = ("!=", ">=", "<=", "=", ">", "<")  # two-character operators first
COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
SPLIT_RE = re.compile(r",|\s+and\s+", re.IGNORECASE)
COND_RE = re.compile(r"^\s*([^!<>=\s]+)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")
KNOWN_SAMPLE = 500  # rows whose label keys are listed when a column is unknown


@dataclass(frozen=True)
class Condition:
    """One `column OP value` test; `value` is a float (numeric comparison) or a str (text comparison)."""

    column: str
    op: str
    value: float | str

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else repr(self.value)
        return f"{self.column}{self.op}{value}"


def _value(text: str) -> float | str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        number = float(text)
    except ValueError:
        return text
    if number != number or number in (float("inf"), float("-inf")):
        return text  # "nan" / "inf" are taken as words, not numbers
    return number


def parse_where(text: str | None, *, cli: bool = True) -> list[Condition]:
    """Conditions of a `--where` expression (empty for None or blank); bad syntax is a one-line BadInputError
    (`cli`: naming `--where`, else the Python API's `where`)."""
    if text is None or not text.strip():
        return []
    where = option_name("where", cli)
    conditions = []
    for part in SPLIT_RE.split(text):
        if not part.strip():
            raise BadInputError(f"{where} {text!r}: empty condition (stray comma or AND)")
        m = COND_RE.match(part)
        if not m or not m.group(3) or m.group(3)[0] in "!<>=":
            raise BadInputError(f"{where} {text!r}: {part.strip()!r} is not `column OP value` "
                                f"(OP one of {' '.join(OPS)}), e.g. tonsil_grade>=3")
        column, op, raw = m.groups()
        if not COLUMN_RE.match(column):
            raise BadInputError(f"{where} {text!r}: {column!r} is not a column name (letters, digits, _ . -)")
        conditions.append(Condition(column, op, _value(raw)))
    return conditions


NUMBER_KINDS = frozenset({"integer", "real", "number"})   # SQLite json_type / PostgreSQL jsonb_typeof
TEXT_KINDS = frozenset({"text", "string"})


@dataclass(frozen=True)
class LabelColumn:
    """One labels key over an index: ids [M], numbers [M] (NaN: not a JSON number), texts [M] ("" and
    is_text False: not a JSON string)."""

    ids: np.ndarray
    numbers: np.ndarray
    texts: np.ndarray
    is_text: np.ndarray

    def matches(self, cond: Condition) -> np.ndarray:
        """Ids whose value satisfies `cond` (a value of the other type, or none, never does)."""
        if isinstance(cond.value, float):
            values, valid = self.numbers, ~np.isnan(self.numbers)
        else:
            values, valid = self.texts, self.is_text
        with np.errstate(invalid="ignore"):
            hit = {"=": values == cond.value, "!=": values != cond.value, ">=": values >= cond.value,
                   "<=": values <= cond.value, ">": values > cond.value, "<": values < cond.value}[cond.op]
        return self.ids[valid & hit]


class LabelFilter:
    """`--where` for one index: each key's values are extracted with SQL on first use and kept, so the
    conditions of warm queries are evaluated in numpy (~1 ms at 100k images instead of a ~180 ms JSON scan
    per query, benchmarks/bench_retrieval.py). Like the engine's FAISS file, the columns are a snapshot."""

    def __init__(self, db, index_name: str) -> None:
        self.db = db
        self.index_name = index_name
        self._columns: dict[str, LabelColumn] = {}

    def column(self, name: str, *, cli: bool = True) -> LabelColumn:
        """The values of labels key `name` over the index; a key no image has is a BadInputError (`cli`: see
        `parse_where`)."""
        if name not in self._columns:
            from s2m_retrieval.storage.catalog import label_values

            with self.db.session() as s:
                rows = label_values(s, self.index_name, name)
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            numbers = np.array([float(v) if k in NUMBER_KINDS else np.nan for _, k, v in rows], dtype=np.float64)
            is_text = np.array([k in TEXT_KINDS for _, k, _ in rows], dtype=bool)
            if not is_text.any() and np.isnan(numbers).all():
                known = ", ".join(self._known_keys()) or "none, the images have no labels"
                raise BadInputError(f"{option_name('where', cli)}: unknown column {name!r} in index "
                                    f"{self.index_name!r} (known: {known})")
            texts = np.array([str(v) if t else "" for (_, _, v), t in zip(rows, is_text)], dtype=str)
            self._columns[name] = LabelColumn(ids, numbers, texts, is_text)
        return self._columns[name]

    def _known_keys(self) -> list[str]:
        from s2m_retrieval.storage.catalog import sample_labels

        with self.db.session() as s:
            sample = sample_labels(s, self.index_name, KNOWN_SAMPLE)
        return sorted({key for labels in sample for key in labels})

    def allowed(self, conditions: list[Condition], *, cli: bool = True) -> np.ndarray:
        """Sorted image ids (int64) of the index whose labels satisfy every condition (`cli`: see `parse_where`)."""
        result = None
        for cond in conditions:
            column = self.column(cond.column, cli=cli)
            number = isinstance(cond.value, float)
            if not (column.is_text.any() if not number else (~np.isnan(column.numbers)).any()):
                # a value of a type the column never holds matches nothing: almost always a typo
                hint = "; separate conditions with ',' or AND" if ";" in str(cond.value) else ""
                raise BadInputError(f"{option_name('where', cli)} {cond}: column {cond.column!r} holds "
                                    f"{'text' if number else 'numbers'}, not {cond.value!r}{hint}")
            ids = column.matches(cond)
            result = ids if result is None else np.intersect1d(result, ids, assume_unique=True)
        return np.zeros(0, np.int64) if result is None else result
