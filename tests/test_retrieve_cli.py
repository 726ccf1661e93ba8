"""`s2m retrieve` and the `retrieve` script end to end with tiny random models: output forms and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import cli_error, labels_csv, phantom_sketch

from cli.main import app
from s2m_retrieval.ingest.report import verify_index

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sketch_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("sketch") / "query.png"
    Image.fromarray(phantom_sketch()).save(path)
    return path


def _args(setup, *extra, home=None) -> list[str]:
    return ["retrieve", *map(str, extra), "--home", str(home or setup.home), "--model", str(setup.models)]


def _json(runner, args) -> dict:
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_build_with_the_inverter_then_retrieve_without_the_archive(runner, setup, tmp_path, sketch_png):
    archive = Path(shutil.copytree(setup.archive, tmp_path / "archive"))
    home = tmp_path / "home"
    result = runner.invoke(app, ["index", "build", str(archive), "--home", str(home), "--encoder", setup.encoder_spec])
    assert result.exit_code == 0, result.output
    assert "added 24" in result.stdout
    info = runner.invoke(app, ["index", "info", "--home", str(home), "--json"])
    assert json.loads(info.stdout)["stamp"]["weighting"] == "wplus:coarse=1,medium=0.5,fine=0.1"
    shutil.rmtree(archive / "images")  # the re-rank reads stored thumbs, never archive files
    result = runner.invoke(app, _args(setup, sketch_png, "--k", "5", "--alpha", "0.5", home=home))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("index 'default' (24 images, Flat), perceptual random:0, T=3, alpha 0.5")
    header = lines[1].split()
    assert header[:6] == ["rank", "id", "path", "latent", "perceptual", "score"] and "tonsil_grade" in header
    rows = [line.split() for line in lines[2:7]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"] and all(r[2].endswith(".png") for r in rows)
    assert [float(r[5]) for r in rows] == sorted(float(r[5]) for r in rows)
    assert lines[7].startswith("paths relative to") and lines[8].startswith("timings (ms): generate")


def test_json_schema(runner, setup, sketch_png):
    out = _json(runner, _args(setup, sketch_png, "--k", "4", "--candidates", "12", "--steps", "1", "--alpha", "0.3"))
    assert set(out) == {"hits", "candidates", "timings_ms", "provenance", "sheet"}
    assert len(out["hits"]) == 4 and out["candidates"] == 12 and out["sheet"] is None
    for hit in out["hits"]:
        assert set(hit) == {"rank", "id", "path", "latent_distance", "perceptual_distance", "score", "labels"}
        assert isinstance(hit["id"], int) and isinstance(hit["score"], float) and "tonsil_grade" in hit["labels"]
    p = out["provenance"]
    assert (p["steps"], p["alpha"], p["n_candidates"], p["query"], p["perceptual"]) == (1, 0.3, 12, "sketch",
                                                                                         "random:0")
    assert set(p["models"]) == {"generator", "encoder", "refiner", "inverter"}
    assert out["timings_ms"]["total"] >= out["timings_ms"]["generate"] > 0


def test_like_where_max_distance_and_sheet(runner, setup, tmp_path):
    out = _json(runner, _args(setup, "--like", "9", "--k", "3"))
    assert out["hits"][0]["id"] == 9 and out["hits"][0]["latent_distance"] == pytest.approx(0, abs=1e-5)
    assert out["provenance"]["query"] == "like"

    out = _json(runner, _args(setup, "--like", "9", "--k", "30", "--where", "tonsil_grade>=3"))
    grades = [h["labels"]["tonsil_grade"] for h in out["hits"]]
    assert grades and min(grades) >= 3
    assert len(grades) == sum(int(r["tonsil_grade"]) >= 3 for r in labels_csv(setup.archive).values())

    cut = _json(runner, _args(setup, "--like", "9", "--k", "24", "--alpha", "1"))["hits"][4]["latent_distance"]
    out = _json(runner, _args(setup, "--like", "9", "--k", "24", "--max-distance", cut))
    assert 5 <= len(out["hits"]) < 24 and all(h["latent_distance"] <= cut for h in out["hits"])

    sheet = tmp_path / "sheets" / "sheet.png"
    result = runner.invoke(app, _args(setup, "--like", "9", "--k", "4", "--sheet", sheet))
    assert result.exit_code == 0, result.output
    assert f"sheet: {sheet}" in result.stdout
    assert Image.open(sheet).size[0] >= 5 * 96  # query + 4 hits
    none = runner.invoke(app, _args(setup, "--like", "9", "--where", "tonsil_grade>9"))
    assert none.exit_code == 0 and "no image matches" in none.stdout


_error = cli_error


def test_errors_are_one_line_and_lose_nothing(setup, tmp_path, capsys, sketch_png):
    home = setup.private_home(tmp_path / "home")
    sheet = tmp_path / "sheet.png"
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    models = tmp_path / "models"
    shutil.copytree(setup.models, models)
    (models / "refiner.pt").write_bytes(b"\x00" * 64)
    cases = {
        "no index named 'nope'": _args(setup, sketch_png, "--index", "nope", home=home),
        "sketch": _args(setup, blank, home=home),
        "bad.png": _args(setup, bad, home=home),
        "rebuild": ["retrieve", str(sketch_png), "--home", str(home), "--model", str(setup.other_models)],
        "refiner.pt": ["retrieve", str(sketch_png), "--home", str(home), "--model", str(models)],
        "give a sketch image (s2m retrieve SKETCH.png) or --like": _args(setup, home=home),
        "unknown column 'grade'": _args(setup, "--like", "1", "--where", "grade>1", home=home),
        "--steps applies to sketch queries": _args(setup, "--like", "1", "--steps", "2", home=home),
        "Invalid value for '--k'": _args(setup, sketch_png, "--k", "abc", home=home),  # usage errors: one line too
    }
    for needle, args in cases.items():
        code, err = _error(capsys, args + ["--sheet", str(sheet)])
        assert code != 0 and needle in err, (needle, err)
    assert "is empty" in _error(capsys, _args(setup, blank, home=home))[1]
    for where, needle in ((tmp_path, "is a folder"), (tmp_path / "sheet", "image format"),
                          (bad / "x.png", "is a file, not a folder")):
        assert needle in _error(capsys, _args(setup, sketch_png, "--sheet", str(where), home=home))[1]
    assert verify_index(home=home).ok and not sheet.exists()

    faiss_file = home / "indexes" / "default" / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    code, err = _error(capsys, _args(setup, sketch_png, home=home))
    assert code != 0 and "corrupt or truncated" in err and "index.faiss" in err


def test_retrieve_console_script(setup, sketch_png):
    def run(*args):
        code = "import sys; from cli.main import retrieve_main; sys.argv = sys.argv[1:]; retrieve_main()"
        return subprocess.run([sys.executable, "-c", code, "retrieve", *map(str, args)], capture_output=True,
                              text=True, cwd=REPO)

    ok = run(sketch_png, "--k", "2", "--json", "--home", setup.home, "--model", setup.models)
    assert ok.returncode == 0, ok.stderr
    assert [h["rank"] for h in json.loads(ok.stdout)["hits"]] == [1, 2]
    bad = run(sketch_png, "--home", setup.home, "--model", setup.other_models)
    assert bad.returncode == 1 and bad.stderr.startswith("error: index 'default' was built with generator")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_defaults_match_the_library():
    import cli.retrieve as cli_retrieve
    from s2m_retrieval.query import api, ranking
    from s2m_retrieval.query import engine as retrieval

    assert api.DEFAULT_ALPHA == ranking.DEFAULT_ALPHA
    assert (cli_retrieve.DEFAULT_K, cli_retrieve.DEFAULT_CANDIDATES) == (retrieval.DEFAULT_K,
                                                                          retrieval.DEFAULT_CANDIDATES)
    assert (cli_retrieve.DEFAULT_ALPHA, cli_retrieve.DEFAULT_NORMALISATION) == (ranking.DEFAULT_ALPHA,
                                                                                ranking.DEFAULT_NORMALISATION)
