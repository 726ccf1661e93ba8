"""Batch queries: `RetrievalEngine.query_sketches` against `query_sketch` one by one, and `s2m retrieve A B ...` /
`--batch DIR_OR_CSV` (JSON Lines, a table a query, a folder of sheets, per-query errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

from cli.main import app
from s2m_retrieval.errors import BadInputError


@pytest.fixture(scope="module")
def sketches(tmp_path_factory) -> dict[str, Path]:
    """Three good sketch files (two sizes), a blank one and a truncated one."""
    folder = tmp_path_factory.mktemp("sketches")
    files = {}
    for name, index, size in (("a", 0, 64), ("b", 1, 64), ("c", 2, 128)):
        files[name] = folder / f"{name}.png"
        Image.fromarray(phantom_sketch(index=index, size=size)).save(files[name])
    files["blank"] = folder / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(files["blank"])
    files["bad"] = folder / "bad.png"
    files["bad"].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return files


def _same(batched, single) -> None:
    assert [h.id for h in batched.hits] == [h.id for h in single.hits]
    for b, s in zip(batched.hits, single.hits):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert b.latent_distance == pytest.approx(s.latent_distance, rel=1e-5, abs=1e-6)
        if s.perceptual_distance is None:   # alpha 1 (the default): no re-rank
            assert b.perceptual_distance is None
        else:
            assert b.perceptual_distance == pytest.approx(s.perceptual_distance, rel=1e-5, abs=1e-6)
    assert batched.candidates == single.candidates and batched.provenance == single.provenance
    assert np.abs(batched.x_hat.astype(int) - single.x_hat.astype(int)).max() <= 1
    assert np.array_equal(batched.query, single.query) and np.array_equal(batched.thumbs, single.thumbs)


@pytest.mark.parametrize("options", [dict(), dict(steps=0, code="reinvert", alpha=0.3, k=6),
                                     dict(code="blend", where="tonsil_grade>=2", normalisation="rank")])
def test_query_sketches_gives_what_query_sketch_gives_one_by_one(engine, options):
    pages = [phantom_sketch(index=i, size=64 if i % 3 else 128) for i in range(7)]
    batched = engine.query_sketches(pages, batch_size=3, **options)  # 64 px: 3 + 1, 128 px: 3
    assert len(batched) == 7
    for page, result in zip(pages, batched):
        _same(result, engine.query_sketch(page, **options))
        assert set(result.timings_ms) >= {"generate", "code", "search", "rerank", "total"}


def test_query_sketches_checks_every_sketch_first(engine):
    blank = np.full((64, 64), 255, np.uint8)
    with pytest.raises(BadInputError, match="sketch 1: sketch is empty"):
        engine.query_sketches([phantom_sketch(), blank])
    with pytest.raises(BadInputError, match="batch size"):
        engine.query_sketches([phantom_sketch()], batch_size=0)
    assert engine.query_sketches([]) == []


def test_query_sketches_of_a_width_that_reads_as_colour(engine):
    narrow = [np.full((64, w), 255, np.uint8) for w in (3, 3, 4)]
    for page in narrow:
        page[8:56, 1] = 0
    for page, result in zip(narrow, engine.query_sketches(narrow)):
        _same(result, engine.query_sketch(page))


def _invoke(runner, setup, *args):
    return runner.invoke(app, ["retrieve", *map(str, args), "--home", str(setup.home), "--model", str(setup.models)])


def test_several_sketches_json_lines_with_per_query_errors(runner, setup, sketches):
    order = ["a", "blank", "b", "bad", "c"]
    result = _invoke(runner, setup, *(sketches[n] for n in order), "--k", "4", "--json")
    assert result.exit_code == 2, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sketch"] for r in records] == [str(sketches[n]) for n in order]
    assert "is empty" in records[1]["error"] and "bad.png" in records[3]["error"]
    errors = result.stderr.splitlines()
    assert errors[:2] == [f"error: {records[1]['error']}", f"error: {records[3]['error']}"]
    assert f"sketch {sketches['blank']} is empty" in errors[0] and errors[2] == "2 of 5 queries failed"
    for name, record in zip(order, records):
        if "error" in record:
            continue
        single = _invoke(runner, setup, sketches[name], "--k", "4", "--json")
        assert single.exit_code == 0, single.output
        alone = json.loads(single.stdout)
        assert [h["id"] for h in record["hits"]] == [h["id"] for h in alone["hits"]]
        assert [h["score"] for h in record["hits"]] == pytest.approx([h["score"] for h in alone["hits"]], abs=1e-5)
        assert set(record) == set(alone) | {"sketch"} and record["sheet"] is None


def test_batch_folder_tables_and_a_folder_of_sheets(runner, setup, sketches, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(sketches[name].read_bytes())
    (folder / "notes.txt").write_text("not a sketch")
    sheets = tmp_path / "sheets"
    result = _invoke(runner, setup, sketches["a"], "--batch", folder, "--k", "3", "--sheet", sheets)
    assert result.exit_code == 0, result.output
    tables = result.stdout.split("\n\n")
    wanted = [sketches["a"], folder / "a.png", folder / "b.png", folder / "c.png"]
    assert [t.splitlines()[0] for t in tables] == [f"sketch {p}" for p in wanted]
    for table, name in zip(tables, ["a", "a-2", "b", "c"]):
        lines = table.splitlines()
        assert lines[1].startswith("index 'default' (24 images") and lines[2].split()[:3] == ["rank", "id", "path"]
        assert lines[-1] == f"sheet: {sheets / name}.png" and lines[-2].startswith("timings (ms): generate")
    assert sorted(p.name for p in sheets.iterdir()) == ["a-2.png", "a.png", "b.png", "c.png"]
    assert Image.open(sheets / "c.png").size[0] >= 5 * 96  # query + x_hat + 3 hits


def test_batch_csv_paths_relative_to_it(runner, setup, sketches, tmp_path):
    (tmp_path / "sketches").mkdir()
    for name in ("a", "b"):
        (tmp_path / "sketches" / f"{name}.png").write_bytes(sketches[name].read_bytes())
    csv = tmp_path / "queries.csv"
    csv.write_text(f"sketch,note\nsketches/a.png,x\nsketches/missing.png,y\n{sketches['b']},z\n")
    result = _invoke(runner, setup, "--batch", csv, "--json", "--k", "2")
    assert result.exit_code == 2, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sketch"] for r in records] == [str(tmp_path / "sketches" / "a.png"),
                                              str(tmp_path / "sketches" / "missing.png"), str(sketches["b"])]
    assert "sketch file not found" in records[1]["error"] and len(records[2]["hits"]) == 2
    # A folder holding a manifest.csv (as `s2m eval make-queries` writes) is read as that manifest.
    (tmp_path / "sketches" / "manifest.csv").write_text("sketch,target_id\na.png,img_0001\n")
    one = _invoke(runner, setup, "--batch", tmp_path / "sketches", "--json")
    assert one.exit_code == 0, one.output
    assert [json.loads(line)["sketch"] for line in one.stdout.splitlines()] == [str(tmp_path / "sketches" / "a.png")]


def test_batch_input_errors_are_one_line(setup, sketches, tmp_path, capsys):
    from test_retrieve_cli import _error

    empty = tmp_path / "empty"
    empty.mkdir()
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("file\na.png\n")
    blank_cell = tmp_path / "blank_cell.csv"
    blank_cell.write_text("sketch\na.png\n\"\"\n")
    headed = tmp_path / "headed.csv"
    headed.write_text("sketch\n")
    base = ["retrieve", "--home", str(setup.home), "--model", str(setup.models)]
    cases = {
        "holds no sketch images and no manifest.csv": ["--batch", str(empty)],
        "no such folder or CSV file": ["--batch", str(tmp_path / "nope")],
        "give a folder of sketches or a CSV file": ["--batch", str(sketches["a"])],
        "no sketch column (has file)": ["--batch", str(no_column)],
        "line 3: empty sketch path": ["--batch", str(blank_cell)],
        "the CSV lists no sketches": ["--batch", str(headed)],
        "with several sketches --sheet names a folder": [str(sketches["a"]), str(sketches["b"]), "--sheet",
                                                         str(tmp_path / "out.png")],
        "is a file, not a folder": [str(sketches["a"]), str(sketches["b"]), "--sheet", str(sketches["a"] / "x")],
        "give either a sketch image or --like": [str(sketches["a"]), str(sketches["b"]), "--like", "3"],
    }
    for needle, args in cases.items():
        code, err = _error(capsys, base + args)
        assert code == 2 and needle in err, (needle, err)
    code, err = _error(capsys, base + [str(sketches["a"]), str(sketches["b"]), "--index", "nope"])
    assert "no index named 'nope'" in err  # what fails every query fails the run, before any of them
