"""`s2m retrieve --server`: the thin client against a real server on a free port gives the local table, JSON and
sheet, imports no torch, and fails in one line when the server is not there, wants a token or refuses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

pytest.importorskip("fastapi", reason="the client tests serve the API: pip install -e '.[test]'")

from cli.main import _run, app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(engine):
    """The API over the test index on a free loopback port (a uvicorn thread)."""
    from s2m_retrieval.service import create_app
    from s2m_retrieval.service.server import background_server

    with background_server(create_app(engine)) as url:
        yield url


@pytest.fixture(scope="module")
def guarded(engine):
    """The same API wanting a token."""
    from s2m_retrieval.service import create_app
    from s2m_retrieval.service.server import background_server

    with background_server(create_app(engine, token=TOKEN)) as url:
        yield url


@pytest.fixture(scope="module")
def strict(engine):
    """The same API with a service limit below the CLI's own (--k at most 5): a refusal only the server makes."""
    from s2m_retrieval.service import ServiceLimits, create_app
    from s2m_retrieval.service.server import background_server

    with background_server(create_app(engine, limits=ServiceLimits(max_k=5))) as url:
        yield url


@pytest.fixture(scope="module")
def sketch_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("client_sketches")
    files = {"a": folder / "a.png", "b": folder / "b.png", "blank": folder / "blank.png"}
    Image.fromarray(phantom_sketch(index=0)).save(files["a"])
    Image.fromarray(phantom_sketch(index=1)).save(files["b"])
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(files["blank"])
    return files


def _local(setup, *args) -> list[str]:
    return ["retrieve", *map(str, args), "--home", str(setup.home), "--model", str(setup.models)]


def _invoke(runner, args):
    return runner.invoke(app, [str(a) for a in args])


def _error(capsys, args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as code:
        _run(app, [str(a) for a in args])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return code.value.code, err


def test_table_json_and_sheet_as_the_local_path_gives_them(runner, setup, server, sketch_files, tmp_path):
    options = ["--k", "5", "--alpha", "0.4", "--where", "tonsil_grade>=1"]
    here = _invoke(runner, _local(setup, sketch_files["a"], *options, "--json"))
    there = _invoke(runner, ["retrieve", sketch_files["a"], *options, "--json", "--server", server])
    assert here.exit_code == 0 and there.exit_code == 0, (here.output, there.output)
    mine, theirs = json.loads(here.stdout), json.loads(there.stdout)
    assert set(theirs) == set(mine) and theirs["candidates"] == mine["candidates"]
    assert [(h["rank"], h["id"], Path(h["path"]).name) for h in mine["hits"]] == \
        [(h["rank"], h["id"], h["file"]) for h in theirs["hits"]]
    assert [h["score"] for h in theirs["hits"]] == pytest.approx([h["score"] for h in mine["hits"]], abs=1e-6)
    assert {k: v for k, v in theirs["provenance"].items()} == mine["provenance"]
    assert theirs["timings_ms"]["round_trip"] >= theirs["timings_ms"]["total"] > 0

    here = _invoke(runner, _local(setup, sketch_files["a"], *options))
    there = _invoke(runner, ["retrieve", sketch_files["a"], *options, "--server", server])
    mine, theirs = here.stdout.splitlines(), there.stdout.splitlines()
    assert mine[0] == theirs[0] and mine[1] == theirs[1]  # provenance, filters
    assert [line.split()[:2] + line.split()[3:] for line in mine[2:8]] == \
        [line.split()[:2] + line.split()[3:] for line in theirs[2:8]]  # header and rows but the path column
    assert theirs[8] == f"files of the archive served at {server}" and theirs[9].startswith("timings (ms): generate")

    sheets = {}
    for where, args in (("here", _local(setup, sketch_files["a"], *options)),
                        ("there", ["retrieve", sketch_files["a"], *options, "--server", server])):
        sheets[where] = tmp_path / f"{where}.png"
        done = _invoke(runner, args + ["--sheet", sheets[where]])
        assert done.exit_code == 0 and f"sheet: {sheets[where]}" in done.stdout, done.output
    assert np.array_equal(np.asarray(Image.open(sheets["here"])), np.asarray(Image.open(sheets["there"])))

    like = _invoke(runner, ["retrieve", "--like", "9", "--k", "3", "--json", "--server", server,
                            "--sheet", tmp_path / "like.png"])
    assert like.exit_code == 0, like.output
    assert json.loads(like.stdout)["hits"][0]["id"] == 9 and (tmp_path / "like.png").is_file()


def test_several_sketches_through_the_server(runner, server, sketch_files, tmp_path):
    names = ["a", "blank", "b"]
    result = _invoke(runner, ["retrieve", *(sketch_files[n] for n in names), "--k", "2", "--json",
                              "--server", server, "--sheet", tmp_path / "sheets"])
    assert result.exit_code == 2, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sketch"] for r in records] == [str(sketch_files[n]) for n in names]
    assert records[1]["error"].startswith(f"sketch {sketch_files['blank']} is empty")
    assert len(records[0]["hits"]) == len(records[2]["hits"]) == 2
    assert result.stderr.splitlines() == [f"error: {records[1]['error']}", "1 of 3 queries failed"]
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["a.png", "b.png"]


def test_token(runner, guarded, sketch_files, capsys, monkeypatch):
    args = ["retrieve", sketch_files["a"], "--k", "2", "--json", "--server", guarded]
    ok = _invoke(runner, args + ["--token", TOKEN])
    assert ok.exit_code == 0 and len(json.loads(ok.stdout)["hits"]) == 2, ok.output
    code, err = _error(capsys, args)
    assert code == 1 and "wants its token and got no token (give --token or set S2M_SERVE_TOKEN)" in err
    code, err = _error(capsys, args + ["--token", "wrong"])
    assert code == 1 and "wants its token and got the token given" in err
    monkeypatch.setenv("S2M_SERVE_TOKEN", TOKEN)
    assert _invoke(runner, args).exit_code == 0


def test_errors_are_one_line(server, strict, sketch_files, capsys, tmp_path):
    closed = socket.create_server(("127.0.0.1", 0))
    nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    a = sketch_files["a"]
    cases = {
        (1, f"cannot reach the server at {nobody}: Connection refused; is `s2m serve` running there?"):
            ["retrieve", a, "--server", nobody],
        (1, "has no /v1/retrieve (HTTP 404)"): ["retrieve", a, "--server", server + "/elsewhere"],
        (1, "answered HTTP 422: k: at most 5 here, got 8"): ["retrieve", a, "--k", "8", "--server", strict],
        (2, "--server must be the URL of a running s2m serve"): ["retrieve", a, "--server", "localhost:8000"],
        (2, f"sketch {sketch_files['blank']} is empty"): ["retrieve", sketch_files["blank"], "--server", server],
        (2, "sketch file not found"): ["retrieve", tmp_path / "nope.png", "--server", server],
        (2, "image 999 is not in index 'default'"): ["retrieve", "--like", "999", "--server", server],
        (2, "with --server give an image id"): ["retrieve", "--like", "a.png", "--server", server],
        (2, "--model, --code: with --server the server's index and models answer"):
            ["retrieve", a, "--server", server, "--model", "x", "--code", "blend"],
        (2, "--token goes with --server URL"): ["retrieve", a, "--token", "x"],
        (2, "unknown column 'grade'"): ["retrieve", a, "--where", "grade>1", "--server", server],
    }
    for (want, needle), args in cases.items():
        code, err = _error(capsys, args)
        assert code == want and needle in err, (needle, err)


def test_options_are_checked_before_the_server_is_asked(sketch_files, capsys):
    # Port 9 (discard): nothing listens, so any request would end in "cannot reach the server".
    nobody = "http://127.0.0.1:9"
    for option, needle in ((["--k", "0"], "--k and --candidates must be >= 1, got 0 and 100"),
                           (["--k", "500"], "--k and --candidates may be at most 100 and 1000, got 500 and 100"),
                           (["--alpha", "2"], "--alpha must be between 0 and 1, got 2.0"),
                           (["--steps", "11"], "--steps must be between 0 and 10, got 11")):
        code, err = _error(capsys, ["retrieve", sketch_files["a"], *option, "--server", nobody])
        assert code == 2 and needle in err and "server" not in err, (option, err)


def test_the_client_path_imports_no_torch(server, sketch_files):
    """A whole `s2m retrieve --server` run in a fresh interpreter, then a look at what it imported."""
    code = ("import sys\nfrom cli.main import _run, app\ntry:\n    _run(app, sys.argv[1:])\nfinally:\n"
            "    heavy = [m for m in ('torch', 'faiss', 's2m_retrieval.query.engine', 's2m_retrieval.model.pipeline') "
            "if m in sys.modules]\n    print('heavy:', heavy, file=sys.stderr)\n")
    for extra in ([], ["--sheet", str(sketch_files["a"].with_name("client_sheet.png"))]):
        done = subprocess.run([sys.executable, "-c", code, "retrieve", str(sketch_files["a"]), "--json",
                               "--server", server, *extra], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["hits"] and done.stderr.strip() == "heavy: []", done.stderr
    local = subprocess.run([sys.executable, "-c", "import sys, cli.client, cli.retrieve, cli.main; "
                            "print('torch' in sys.modules, 'faiss' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert local.stdout.split() == ["False", "False"], local.stderr
