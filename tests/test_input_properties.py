"""Generated inputs (issue 19, hypothesis): CSV manifests and labels.csv, `--where` filters and image ids are either
read right or refused with one domain-error line; never another exception, never a silently wrong answer."""

from __future__ import annotations

import codecs
import csv
import io
import math
import operator
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from s2m_retrieval.data.archive import scan_archive
from s2m_retrieval.data.csv_table import read_table
from s2m_retrieval.errors import ArchiveError, BadInputError, S2MError
from s2m_retrieval.query.filters import OPS, LabelFilter, parse_where
from s2m_retrieval.storage.catalog import MAX_IMAGE_ID, as_image_id

# Derandomized: the same examples on every run (tests are deterministic); no example database in the checkout.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=250,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TEXT = st.characters(exclude_categories=("Cs",))  # anything UTF-8 can hold


def _one_line(exc: BaseException) -> str:
    """The message of a domain error, checked to be one printable line."""
    assert isinstance(exc, S2MError), repr(exc)
    text = str(exc)
    assert len(text.splitlines()) == 1 and "Traceback" not in text, repr(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text), repr(text)
    return text


def _csv_text(rows: list[list[str]], quote_all: bool, terminator: str) -> str:
    """RFC 4180 text of `rows` (csv.writer leaves a lone CR unquoted under a LF terminator: not a sound file)."""
    def field(cell: str, alone: bool) -> str:
        needs = quote_all or any(c in cell for c in ',"\r\n') or (alone and not cell)
        return '"' + cell.replace('"', '""') + '"' if needs else cell

    return "".join(",".join(field(c, len(r) == 1) for c in r) + terminator for r in rows)


def _physical_lines(text: str) -> int:
    """Lines a CSV reader has read at the end of `text` (what it reports as the line of the last row)."""
    return len(io.StringIO(text, newline="").readlines())


@st.composite
def tables(draw, extra_fields: bool = False):
    """(header, rows) with distinct stripped column names; rows may be short (never empty: a blank line is no
    row), or, with `extra_fields`, one of them longer than the header."""
    names = draw(st.lists(st.text(TEXT, min_size=1, max_size=6).map(str.strip).filter(bool), min_size=1,
                          max_size=5, unique=True))
    cell = st.text(TEXT, max_size=8)
    rows = draw(st.lists(st.lists(cell, min_size=1, max_size=len(names)), max_size=6))
    if extra_fields:
        at = draw(st.integers(0, len(rows)))
        rows.insert(at, draw(st.lists(cell, min_size=len(names) + 1, max_size=len(names) + 3)))
    return names, rows


FORMATS = dict(bom=st.booleans(), quoting=st.booleans(),
               terminator=st.sampled_from(["\n", "\r\n"]))


@PROPERTY
@given(table=tables(), **FORMATS)
def test_csv_tables_read_back_exactly(tmp_path_factory, table, bom, quoting, terminator):
    names, rows = table
    path = tmp_path_factory.getbasetemp() / "table.csv"
    text = _csv_text([names, *rows], quoting, terminator)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    header, read = read_table(path)
    assert header == names
    lines = [_physical_lines(_csv_text([names, *rows[:i + 1]], quoting, terminator)) for i in range(len(rows))]
    assert [line for line, _ in read] == lines
    assert [list(row.values()) for _, row in read] == [r + [None] * (len(names) - len(r)) for r in rows]
    assert all(list(row) == names for _, row in read)


@PROPERTY
@given(table=tables(extra_fields=True), **FORMATS)
def test_csv_rows_with_extra_fields_are_named_by_line(tmp_path_factory, table, bom, quoting, terminator):
    names, rows = table
    path = tmp_path_factory.getbasetemp() / "extra.csv"
    path.write_text(("\ufeff" if bom else "") + _csv_text([names, *rows], quoting, terminator), encoding="utf-8",
                    newline="")
    first = next(i for i, r in enumerate(rows) if len(r) > len(names))
    line = _physical_lines(_csv_text([names, *rows[:first + 1]], quoting, terminator))
    with pytest.raises(ArchiveError) as err:
        read_table(path, ArchiveError)
    assert f"{path} line {line}: {len(rows[first])} fields, the header has {len(names)}" in _one_line(err.value)


@PROPERTY
@given(names=st.lists(st.sampled_from(["id", "grade", " grade", "", "a\nb"]) | st.text(TEXT, max_size=3),
                      min_size=1, max_size=5))
def test_csv_column_named_twice_is_refused(tmp_path_factory, names):
    # csv.DictReader would keep only the last of two columns of one name: a silently lost column.
    path = tmp_path_factory.getbasetemp() / "names.csv"
    path.write_text(_csv_text([names, ["1"] * len(names)], True, "\n"), encoding="utf-8", newline="")
    stripped = [n.strip() for n in names]
    named = [n for n in stripped if n]
    if len(set(named)) == len(named):  # unnamed (empty) header cells name nothing and may repeat
        assert read_table(path)[0] == stripped
        return
    with pytest.raises(BadInputError) as err:
        read_table(path)
    assert f"{path} line 1: column" in _one_line(err.value) and "twice" in str(err.value)


@PROPERTY
@given(data=st.binary(max_size=64) | st.text(TEXT, max_size=40).map(lambda t: t.encode("utf-8")),
       noise=st.sampled_from([b"", b"\xff", b"\xe9", b"\xc3", b"\x80abc", b"\xef\xbb"]),
       at=st.integers(0, 64))
def test_any_bytes_are_a_table_or_one_line(tmp_path_factory, data, noise, at):
    data = data[:at] + noise + data[at:]
    path = tmp_path_factory.getbasetemp() / "bytes.csv"
    path.write_bytes(data)
    body = data[3:] if data.startswith(codecs.BOM_UTF8) else data
    try:
        body.decode("utf-8")
        bad_line = None
    except UnicodeDecodeError as exc:
        bad_line = body.count(b"\n", 0, exc.start) + 1
    try:
        header, rows = read_table(path, ArchiveError)
    except ArchiveError as exc:
        message = _one_line(exc)
        assert bad_line is None or f"{path} line {bad_line}: not UTF-8 text" in message, message
        return
    # the one exception: a file of only the first bytes of a BOM reads as empty (Python's BOM-aware decoder)
    assert bad_line is None or (codecs.BOM_UTF8.startswith(data) and (header, rows) == ([], []))
    assert all(len(row) == len(header) for _, row in rows)


@PROPERTY
@given(data=st.binary(max_size=48), text=st.text(TEXT, max_size=48), which=st.booleans())
def test_labels_csv_and_manifests_fail_only_with_one_domain_line(tmp_path_factory, data, text, which):
    from s2m_retrieval.evaluation.manifest import read_manifest

    root = tmp_path_factory.getbasetemp() / "anyarchive"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "a.png").touch()
    body = data if which else text.encode("utf-8")
    for header in (b"id,grade\n", b"sketch,target_id\n", b""):
        (root / "labels.csv").write_bytes(header + body)
        try:
            assert [e.stem for e in scan_archive(root)] == ["a"]
        except ArchiveError as exc:
            _one_line(exc)
        try:
            read_manifest(root / "labels.csv")
        except BadInputError as exc:
            _one_line(exc)


MANIFEST_CELLS = st.sampled_from(["s.png", " s.png", "gone.png", "", "sub", "a\nb.png", "x\x00.png", "ph000001",
                                  " 7 ", "2", "2.5", "nan", "é"]) | st.text(TEXT, max_size=6)


@PROPERTY
@given(rows=st.lists(st.tuples(MANIFEST_CELLS, MANIFEST_CELLS, MANIFEST_CELLS), max_size=4), bom=st.booleans())
def test_manifests_are_read_right_or_refused_by_line(tmp_path_factory, rows, bom):
    from s2m_retrieval.data.archive import parse_value
    from s2m_retrieval.evaluation.manifest import read_manifest

    root = tmp_path_factory.getbasetemp() / "manifests"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "s.png").touch()
    path = root / "manifest.csv"
    text = _csv_text([["sketch", "target_id", "grade"], *map(list, rows)], False, "\n")
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", newline="")
    usable = [r for r in rows if r[0] and (root / r[0]).is_file()] if "\x00" not in "".join(r[0] for r in rows) \
        else []
    try:
        queries = read_manifest(path)
    except BadInputError as exc:
        message = _one_line(exc)
        assert len(usable) < len(rows) or not rows, (rows, message)
        assert str(path) in message
        return
    assert len(usable) == len(rows) > 0
    assert [q.sketch for q in queries] == [root / r[0] for r in rows]
    assert [q.target_id for q in queries] == [r[1].strip() or None for r in rows]
    assert [q.labels for q in queries] == [{"grade": parse_value(r[2])} if r[2] else {} for r in rows]


# --- --where filters ---------------------------------------------------------------------------------------------

COLUMNS = ("grade", "note", "mixed", "blank")
CELLS = st.sampled_from(["0", "1", "2", "3", "-1", "2.5", "1e3", "007", " 4", "1_0", "nan", "NaN", "inf", "-inf",
                         "1e999", "", "a", "b", "A", "ä", "a b", "3a", "0x10", "true"]) | st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=4)
# NUL is left out of label text: SQLite's JSON functions end a string at it (what the filter would see is cut).
PY_OPS = {"=": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt,
          "<": operator.lt}


def _kind(value):
    """'number' or 'text' for a label value a filter can compare, else None (null, missing)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return "text" if isinstance(value, str) else None


def _expected_value(raw: str):
    """What a `--where` value means (the module's contract): quoted -> text; a finite number -> float; else text."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    try:
        number = float(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


def _python_filter(conditions, labels_by_id: dict[int, dict]) -> set[int]:
    """The filter evaluated in plain Python over the label rows; a BadInputError where the module must refuse."""
    allowed = set(labels_by_id)
    for column, op, value in conditions:
        kinds = {_kind(labels.get(column)) for labels in labels_by_id.values()} - {None}
        want = "number" if isinstance(value, float) else "text"
        if not kinds:
            raise BadInputError(f"unknown column {column}")
        if want not in kinds:
            raise BadInputError(f"{column} holds no {want}")
        allowed &= {i for i, labels in labels_by_id.items() if _kind(labels.get(column)) == want
                    and PY_OPS[op](float(labels[column]) if want == "number" else labels[column], value)}
    return allowed


WORD = st.text(st.sampled_from("abAB09._-+éä"), min_size=1, max_size=5)
VALUE = (st.sampled_from(["0", "1", "2", "3", "2.5", "-1", "1e3", "nan", "inf", "1e999", "a", "b", "ä", "''",
                          "'3'", '"a b"', "3a"]) | WORD | WORD.map(lambda w: f"'{w}'"))
COLUMN = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,4}", fullmatch=True)  # a name `--where` accepts
CONDITION = st.tuples(st.sampled_from([*COLUMNS, "unknown", "id"]) | COLUMN,
                      st.sampled_from(OPS), VALUE)


@st.composite
def where_texts(draw):
    """(text, [(column, op, raw value)]) of a well-formed `--where` expression, spaced and joined at random."""
    conds = draw(st.lists(CONDITION, min_size=1, max_size=3))
    space = st.sampled_from(["", " ", "  "])
    parts = [f"{draw(space)}{c}{draw(space)}{op}{draw(space)}{v}{draw(space)}" for c, op, v in conds]
    text = parts[0]
    for part in parts[1:]:
        text += draw(st.sampled_from([",", ", ", " AND ", " and "])) + part
    return text, conds


def _open_db(tmp_path_factory):
    from s2m_retrieval.storage import open_database

    return open_database(url=f"sqlite:///{tmp_path_factory.mktemp('where') / 's2m.db'}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def label_db(request, tmp_path_factory):
    """A database (the schema made by the migrations) that each example refills with its label rows; on
    PostgreSQL too when a server is configured (the filter reads labels with each backend's JSON functions)."""
    from conftest import fresh_postgres_database

    from s2m_retrieval.storage import open_database

    if request.param == "sqlite":
        db = _open_db(tmp_path_factory)
        yield db
        db.dispose()
        return
    with fresh_postgres_database() as url:
        db = open_database(url=url)
        yield db
        db.dispose()


@pytest.fixture(scope="module")
def fixed_db(tmp_path_factory):
    """A database holding a few fixed label rows in index 'default'."""
    db = _open_db(tmp_path_factory)
    _fill(db, tmp_path_factory.mktemp("fixed"), [{"grade": "1", "note": "a"}, {"grade": "3", "mixed": "x"},
                                                  {"mixed": "2"}])
    yield db
    db.dispose()


def _fill(db, root: Path, rows: list[dict[str, str]]) -> dict[int, dict]:
    """labels.csv of `rows` read as a build reads it (scan_archive), stored as a build stores it; {id: labels}."""
    from sqlalchemy import delete

    from s2m_retrieval.storage import catalog
    from s2m_retrieval.storage.models import Image, Vector

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():
        old.unlink()
    for i in range(len(rows)):
        (images / f"r{i}.png").touch()
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *COLUMNS])
        for i, row in enumerate(rows):  # a missing cell: a short row (None), as a spreadsheet leaves it
            cells = [row.get(c) for c in COLUMNS]
            while cells and cells[-1] is None:
                cells.pop()
            writer.writerow([f"r{i}", *("" if c is None else c for c in cells)])
    entries = scan_archive(root)
    records = [catalog.ImageRecord(path=str(e.path), stem=e.stem, sha256="0" * 64, width=1, height=1,
                                   labels=e.labels) for e in entries]
    with db.session(write=True) as s:
        s.execute(delete(Vector))
        s.execute(delete(Image))
        mv = catalog.get_or_create_model_version(s, version="v", name="fake", dim=1, metric="m", config={})
        stored = catalog.record_batch(s, "default", mv.id, "shard", records) if records else []
    return {image_id: rec.labels for (image_id, _, _), rec in zip(stored, records)}


LABEL_ROWS = st.lists(st.fixed_dictionaries({}, optional={c: CELLS for c in COLUMNS}), min_size=1, max_size=6)


@settings(PROPERTY, max_examples=150)
@given(rows=LABEL_ROWS, where=where_texts())
def test_valid_filters_agree_with_python(label_db, tmp_path_factory, rows, where):
    text, conds = where
    assume(not any(" and " in f" {v.lower()} " or "," in v for _, _, v in conds))
    labels_by_id = _fill(label_db, tmp_path_factory.getbasetemp() / "wherearchive", rows)
    parsed = parse_where(text)
    expected_conds = [(c, op, _expected_value(v)) for c, op, v in conds]
    assert [(c.column, c.op, c.value) for c in parsed] == expected_conds
    try:
        expected = _python_filter(expected_conds, labels_by_id)
    except BadInputError:
        expected = None
    try:
        got = set(LabelFilter(label_db, "default").allowed(parsed).tolist())
    except BadInputError as exc:
        _one_line(exc)
        assert expected is None, (text, labels_by_id, expected)
        return
    assert got == expected, (text, labels_by_id)


WHERE_JUNK = st.text(TEXT, max_size=30) | st.text(st.sampled_from("ab1 ,=!<>'\"._-;AND\t\n"), max_size=30)


@settings(PROPERTY, max_examples=1000)
@given(text=WHERE_JUNK)
def test_any_where_text_is_a_filter_or_one_line(fixed_db, text):
    try:
        conditions = parse_where(text)
        assert all(c.op in OPS and c.column for c in conditions)
        LabelFilter(fixed_db, "default").allowed(conditions)
    except BadInputError as exc:
        _one_line(exc)


# --- image ids ---------------------------------------------------------------------------------------------------

@settings(PROPERTY, max_examples=1000)
@given(key=st.text(TEXT, max_size=24) | st.integers().map(str) | st.integers(-2**70, 2**70).map(lambda i: f" {i}\t")
       | st.integers())
def test_any_key_is_an_image_id_or_none(key):
    got = as_image_id(key)
    if isinstance(key, int):
        want = key if 0 <= key <= MAX_IMAGE_ID else None
    else:
        plain = key.strip()
        want = int(plain) if plain.isascii() and plain.isdigit() and int(plain) <= MAX_IMAGE_ID else None
    assert got == want and (got is None or type(got) is int)


@settings(PROPERTY, max_examples=300)
@given(key=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
       | st.integers(0, 2**70).map(str))
def test_any_key_names_images_or_none_without_error(fixed_db, key):
    # What `index remove KEY` and `--like KEY` look up (argv cannot hold NUL, so keys here hold none).
    from s2m_retrieval.storage import catalog

    try:
        with fixed_db.session() as s:
            found = catalog.match_images(s, "default", key, [key])
            by_id = catalog.find_image(s, "default", as_image_id(key)) if as_image_id(key) is not None else None
    except S2MError as exc:  # only a domain error may come out of the lookup
        pytest.fail(f"lookup of {key!r} failed: {exc}")
    assert isinstance(found, dict) and (by_id is None or by_id in found)


def test_what_generation_found(tmp_path, label_db):
    """The cases the properties above found, pinned: each was a traceback, a wrong message or a lost column."""
    from s2m_retrieval.evaluation.manifest import read_manifest

    # "nan" / "inf" / "1e999" label cells were stored as JSON NaN / Infinity: every --where on the index then
    # said the SQLite database was damaged (and PostgreSQL refused the build). They are text, as --where reads them.
    labels = _fill(label_db, tmp_path / "a", [{"grade": "nan"}, {"grade": "1e999"}, {"grade": "2"}])
    assert sorted(v["grade"] for v in labels.values() if isinstance(v["grade"], str)) == ["1e999", "nan"]
    assert len(LabelFilter(label_db, "default").allowed(parse_where("grade=nan"))) == 1
    # a column named twice kept only its last values
    (tmp_path / "twice.csv").write_text("id,grade,grade\nx,1,2\n")
    with pytest.raises(BadInputError, match="column 'grade' appears twice"):
        read_table(tmp_path / "twice.csv")
    # a NUL in a manifest's sketch cell was a ValueError traceback; a line break in it made a two-line message
    (tmp_path / "m.csv").write_text('sketch,target_id\n"a\x00.png",x\n')
    with pytest.raises(BadInputError, match="line 2: sketch file not found.*NUL"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text('sketch,target_id\n"a\nb.png",x\n')
    with pytest.raises(BadInputError) as err:
        read_manifest(tmp_path / "m.csv")
    assert _one_line(err.value).endswith("a\\nb.png")
    # a bad byte was placed at the line the chunked decoder had reached, not its own
    (tmp_path / "late.csv").write_bytes(b"id,note\n" + b"x,ok\n" * 3000 + b"y,caf\xe9\n")
    with pytest.raises(BadInputError, match="line 3002: not UTF-8 text"):
        read_table(tmp_path / "late.csv")
