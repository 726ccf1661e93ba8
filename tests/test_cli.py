"""The CLI through Typer's CliRunner: data, sketch, errors as one line, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from cli.main import app


def test_help_does_not_import_torch():
    code = "import sys, cli.main; print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_phantom_and_sheet(runner, tmp_path):
    out = tmp_path / "arch"
    result = runner.invoke(app, ["data", "phantom", "--n", "5", "--size", "64", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 5 phantoms" in result.stdout
    assert len(list((out / "images").glob("*.png"))) == 5
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(app, ["data", "sheet", str(out), "--out", str(sheet), "--masks", "--sketches", "--tile", "32"])
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[0] > 32 * 3


def test_phantom_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "cli", "data", "phantom", "--n", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not empty" in lines[0]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_sketch_from_mask(runner, phantom_archive, tmp_path):
    out = tmp_path / "s.png"
    image = phantom_archive / "images" / "ph000000.png"
    mask = phantom_archive / "masks" / "ph000000.png"
    result = runner.invoke(app, ["sketch", str(image), "--mask", str(mask), "--out", str(out), "--freehand"])
    assert result.exit_code == 0, result.output
    drawing = np.asarray(Image.open(out))
    assert drawing.shape == (64, 64)
    assert (drawing < 128).mean() > 0.03  # there are strokes
    assert (drawing > 200).mean() > 0.5   # on white paper


def test_sketch_from_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "cli", "sketch", str(bad), "--out", str(tmp_path / "o.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "not an image" in proc.stderr
    assert not (tmp_path / "o.png").exists()


def _s2m(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=cwd)


def test_usage_errors_exit_2_without_traceback(tmp_path):
    for args in (["sketch", "x.png"], ["data", "phantom", "--size", "abc", "--out", str(tmp_path)], ["nosuch"]):
        proc = _s2m(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_retrieve_script_usage_error():
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['retrieve', '--k', 'x']; "
                           "from cli.main import retrieve_main; retrieve_main()"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_sketch_refuses_to_overwrite_its_input(phantom_archive, tmp_path):
    import shutil

    image = tmp_path / "img.png"
    shutil.copy(phantom_archive / "images" / "ph000001.png", image)
    before = image.read_bytes()
    proc = _s2m("sketch", str(image), "--mask", str(phantom_archive / "masks" / "ph000001.png"), "--out", str(image))
    assert proc.returncode == 2 and "input file" in proc.stderr
    assert image.read_bytes() == before


def test_unwritable_output_is_one_line(phantom_archive, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _s2m("sketch", str(phantom_archive / "images" / "ph000001.png"), "--mask",
                str(phantom_archive / "masks" / "ph000001.png"), "--out", str(blocker / "sub" / "s.png"))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr  # refused before any work
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_cuda_on_a_machine_without_it_is_one_line(phantom_archive, tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a CUDA GPU, so --device cuda is valid here")
    proc = _s2m("train", "segmenter", str(phantom_archive), "--out", str(tmp_path / "s.pt"), "--steps", "1",
                "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_checks_its_output_and_counts_first(tmp_path):
    (tmp_path / "afile").write_text("x")
    for args, needle in ((["--out", str(tmp_path)], "is a folder"), (["--out", str(tmp_path / "x")], "image format"),
                         (["--out", str(tmp_path / "afile" / "x.png")], "is a file, not a folder"),
                         (["--out", str(tmp_path / "g.png"), "--n", "0"], "--n and --cols must be >= 1")):
        proc = _s2m("generate", *args)
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_missing_generator_says_what_to_do(tmp_path):
    proc = _s2m("generate", "--seed", "1", "--out", str(tmp_path / "g.png"), "--generator", str(tmp_path / "no.pt"))
    assert proc.returncode != 0 and "generator weights not found" in proc.stderr


def test_demo_end_to_end(runner, tmp_path, setup):
    # Tiny random Sketch2MedI models stand in for the shipped ones (test_shipped_models runs the real weights).
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--n", "60", "--model", str(setup.models),
                                 "--perceptual", "random"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "archive" / "images").glob("*.png"))) == 60
    assert len(list((out / "queries").glob("query*.png"))) == 6
    assert Image.open(out / "queries.png").size[0] > 0
    dice = float(result.stdout.split("held-out queries: ")[1].split()[0])
    assert dice > 0.85
    assert "index 'demo': 60 images" in result.stdout
    assert len(list((out / "results").glob("query*.png"))) == 6
    assert result.stdout.count("top-5 ids") == 6
    assert "rank  id  path" in result.stdout
    share = float(result.stdout.split("query's tonsil grade: ")[1].split()[0])
    assert 0.0 <= share <= 1.0


def test_retrieve_checks_options_before_opening_the_index(tmp_path):
    proc = _s2m("retrieve", "--like", "x", "--alpha", "2", "--home", str(tmp_path / "nohome"))
    assert proc.returncode == 2 and "--alpha must be between 0 and 1" in proc.stderr
    proc = _s2m("retrieve", "--like", "x", "--where", "tonsil_grade>>3", "--home", str(tmp_path / "nohome"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no index" not in proc.stderr
    assert not (tmp_path / "nohome").exists()


def test_index_build_help_shows_documented_options(runner):
    # Help texts go through rich markup: "[ray]" was swallowed as a tag; --encoder (README) was hidden.
    result = runner.invoke(app, ["index", "build", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "needs the ray extra" in result.stdout
    assert "--encoder" in result.stdout and "inverter:perceptual=seg" in result.stdout


def test_device_help_says_what_the_check_accepts(runner):
    from cli.runtime import DEVICE_HELP

    assert all(word in DEVICE_HELP for word in ("auto", "cpu", "cuda", "cuda:N"))
    for command in (["retrieve"], ["eval", "retrieval"], ["eval", "sketch2medi"], ["train", "generator"],
                    ["train", "segmenter"], ["train", "encoder"], ["train", "cyclegan"], ["serve"],
                    ["train", "all"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "cuda:N" in result.stdout and "cpu or cuda." not in result.stdout, command
