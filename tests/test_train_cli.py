"""The Sketch2MedI commands through the CLI with tiny configs: train (resumed), generate from a sketch, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import _run, app
from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint, version_hash
from s2m_retrieval.data.sketch import sketch_from_mask
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
TINY = {"encoder": {"widths": [8, 16, 16, 16], "head_width": 8}, "discriminator": {"hidden": 16, "layers": 2}}
BASE = ["--batch", "2", "--limit", "6", "--threads", "1"]
QUICK = BASE + ["--pairs-per-image", "1", "--perceptual", "random"]


def invoke(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    torch.manual_seed(0)
    G = Generator(TINY_G)
    with torch.no_grad():
        G.w_avg.copy_(G.mapping_network(torch.randn(500, TINY_G.z_dim)).mean(0))
    return save_checkpoint(tmp_path_factory.mktemp("g") / "g.pt", kind="generator", config=TINY_G,
                           state_dict=G.state_dict(), w_avg=G.w_avg)


@pytest.fixture(scope="module")
def trained(generator, phantom_archive, tmp_path_factory):
    """E (2 steps, then resumed to 4), E alone, H, inverter and pix2pix, each trained through the CLI."""
    from typer.testing import CliRunner

    runner, root = CliRunner(), tmp_path_factory.mktemp("runs")
    out = {"encoder_log": []}
    for steps in (2, 4):
        result = invoke(runner, "train", "encoder", phantom_archive, "--generator", generator, "--out", root / "e",
                        "--steps", steps, *QUICK, "--config-json", json.dumps(TINY))
        out["encoder_log"].append(result.stdout)
    out["pairs_mtime"] = (root / "e" / "pairs.pt").stat().st_mtime_ns
    invoke(runner, "train", "encoder", phantom_archive, "--generator", generator, "--out", root / "e0", "--no-adv",
           "--steps", 1, *QUICK, "--config-json", json.dumps({"encoder": TINY["encoder"]}))
    invoke(runner, "train", "refiner", phantom_archive, "--generator", generator, "--encoder", root / "e/encoder.pt",
           "--out", root / "h", "--steps", 1, "--refine-steps", 2, *QUICK,
           "--config-json", json.dumps({"refiner": {"widths": [8, 16], "head_width": 8, "rank": 2}}))
    invoke(runner, "train", "inverter", "phantom:4:1", "--generator", generator, "--out", root / "i", "--steps", 1,
           "--iterations", 2, *BASE, "--perceptual", "random", "--config-json", json.dumps(TINY))
    out["index_log"] = invoke(runner, "train", "encoder", phantom_archive, "--generator", generator, "--out",
                              root / "ei", "--objective", "index", "--inverter", root / "i" / "inverter.pt",
                              "--init", root / "e" / "encoder.pt", "--steps", 2, *QUICK, "--config-json",
                              json.dumps({"train": {"negatives": 4, "image_every": 1, "image_batch": 1}})).stdout
    out["embedding_log"] = invoke(runner, "train", "embedding", phantom_archive, "--res", 32, "--out", root / "emb",
                                  "--steps", 1, *BASE, "--pairs-per-image", 1, "--hard-negatives",
                                  root / "ei" / "code_bank.pt", "--config-json",
                                  json.dumps({"embedding": {"widths": [4, 8], "dim": 8}})).stdout
    out["pix2pix_log"] = invoke(runner, "train", "pix2pix", "phantom:4:1", "--res", 32, "--out", root / "p",
                                "--steps", 2, *BASE, "--pairs-per-image", 1, "--config-json",
                                json.dumps({"pix2pix": {"base_channels": 8, "max_channels": 16},
                                            "discriminator": {"base_channels": 8, "max_channels": 16}})).stdout
    return root, out


def test_train_encoder_runs_and_resumes(trained):
    root, out = trained
    first, second = out["encoder_log"]
    assert "resuming" not in first and f"encoder: {root / 'e' / 'encoder.pt'}" in first
    assert "resuming" in second and "at step 2 of 4" in second and "latest.pt" in second
    meta = load_checkpoint(root / "e" / "encoder.pt", kind="encoder")["meta"]
    assert meta["step"] == 4 and meta["with_latent_discriminator"] and meta["perceptual"] == "random:0"
    assert meta["data"]["num_pairs"] == 6 and (root / "e" / "latent_discriminator.pt").is_file()
    assert (root / "e" / "pairs.pt").stat().st_mtime_ns == out["pairs_mtime"]  # drawn once, reused on resume
    assert sorted(p.name for p in (root / "e" / "samples").iterdir()) == ["encoder0000002.png", "encoder0000004.png"]
    assert not load_checkpoint(root / "e0" / "encoder.pt")["meta"]["with_latent_discriminator"]


def test_train_encoder_for_the_index_space(trained):
    root, out = trained
    assert "code bank: 6 images + mirrors" in out["index_log"]
    meta = load_checkpoint(root / "ei" / "encoder.pt", kind="encoder")["meta"]
    assert meta["objective"] == "index" and meta["step"] == 2 and meta["bank"]["num_images"] == 6
    assert meta["init_version"] == version_hash(load_checkpoint(root / "e" / "encoder.pt"))
    assert meta["inverter_version"] == meta["bank"]["inverter_version"]
    assert load_checkpoint(root / "emb" / "embedding.pt", kind="embedding")["meta"]["hard_negatives"] is True


def test_train_refiner_inverter_pix2pix_write_checkpoints(trained):
    root, out = trained
    assert load_checkpoint(root / "h" / "refiner.pt", kind="refiner")["meta"]["train_config"]["refine_steps"] == 2
    assert load_checkpoint(root / "i" / "inverter.pt", kind="inverter")["config"]["extra_channels"] == 3
    payload = load_checkpoint(root / "p" / "pix2pix.pt", kind="pix2pix")
    assert payload["meta"]["data"]["source"] == "phantom" and payload["config"]["img_resolution"] == 32
    assert f"pix2pix: {root / 'p' / 'pix2pix.pt'}" in out["pix2pix_log"]


def test_train_errors_are_one_line(generator, tmp_path, capsys):
    cases = [(["train", "encoder", "phantom:2", "--generator", tmp_path / "none.pt", "--out", tmp_path / "o"],
              "generator weights not found"),
             (["train", "pix2pix", "phantom:x", "--out", tmp_path / "o"], "bad phantom source"),
             (["train", "encoder", "phantom:2", "--generator", generator, "--out", tmp_path / "o",
               "--objective", "pixels"], "--objective must be image or index"),
             (["train", "encoder", tmp_path / "nowhere", "--generator", generator, "--out", tmp_path / "o"],
              "archive folder not found"),
             (["train", "encoder", "phantom:2", "--generator", generator, "--out", tmp_path / "o",
               "--config-json", '{"encoder": {"bogus": 1}}'], "bogus")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _run(app, [str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code != 0 and len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_resume_on_other_data_is_refused_before_the_pairs_are_drawn(trained, generator, phantom_archive, capsys):
    root, _ = trained
    runs = {"e": ["encoder", phantom_archive, "--generator", generator, *QUICK, "--limit", 5, "--config-json",
                  json.dumps(TINY)],
            "i": ["inverter", "phantom:4:2", "--generator", generator, "--iterations", 2, *BASE, "--perceptual",
                  "random", "--config-json", json.dumps(TINY)]}
    changes = {"e": "data limit 6 -> 5", "i": "data source phantom:4:1 -> phantom:4:2"}
    for name, args in runs.items():
        before = {p.name: p.read_bytes() for p in (root / name).iterdir() if p.is_file()}
        with pytest.raises(SystemExit) as exit_info:
            _run(app, [str(a) for a in ["train", *args, "--out", root / name, "--steps", 9]])
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert exit_info.value.code != 0 and len(err) == 1 and changes[name] in err[0], err
        assert "resuming" not in captured.out
        assert {p.name: p.read_bytes() for p in (root / name).iterdir() if p.is_file()} == before  # pairs.pt too


@pytest.fixture
def sketch_file(tmp_path, phantom_archive):
    mask = np.asarray(Image.open(phantom_archive / "masks" / "ph000001.png"))
    path = tmp_path / "sketch.png"
    Image.fromarray(sketch_from_mask(mask, 64)).save(path)
    return path


def test_generate_from_a_sketch(runner, trained, generator, sketch_file, tmp_path):
    root, _ = trained
    models = ["--generator", generator, "--encoder", root / "e/encoder.pt", "--refiner", root / "h/refiner.pt"]
    result = invoke(runner, "generate", sketch_file, "--out", tmp_path / "strip.png", "--steps", 2, *models)
    assert "after each of 2 H steps" in result.stdout
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (2 + 4 * (128 + 2), 2 + 128 + 2 + 14)         # sketch | E | H step 1 | H step 2
    invoke(runner, "generate", sketch_file, "--out", tmp_path / "x.png", "--only-final", *models)
    assert Image.open(tmp_path / "x.png").size == (32, 32)
    invoke(runner, "generate", sketch_file, "--out", tmp_path / "e.png", "--steps", 0, "--only-final", *models[:4])
    invoke(runner, "generate", "--generator", generator, "--out", tmp_path / "grid.png", "--n", 4, "--cols", 2)
    assert Image.open(tmp_path / "grid.png").size == (2 + 2 * 66, 2 + 2 * 66)


def test_generate_refuses_a_blank_sketch(trained, generator, tmp_path, capsys):
    root, _ = trained
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)
    with pytest.raises(SystemExit) as exit_info:
        _run(app, ["generate", str(blank), "--out", str(tmp_path / "x.png"), "--generator", str(generator),
                   "--encoder", str(root / "e/encoder.pt"), "--steps", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "is empty" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_eval_sketch2medi_writes_the_table(runner, trained, generator, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # lpips-alex: weights surely missing
    root, _ = trained
    seg = SegmenterConfig(base_channels=4, depth=2, img_resolution=32)
    segmenter = save_checkpoint(tmp_path / "seg.pt", kind="segmenter", config=seg,
                                state_dict=Segmenter(seg).state_dict())
    result = invoke(runner, "eval", "sketch2medi", "--generator", generator, "--encoder", root / "e/encoder.pt",
                    "--encoder-alone", root / "e0/encoder.pt", "--refiner", root / "h/refiner.pt",
                    "--pix2pix", root / "p/pix2pix.pt", "--inverter", root / "i/inverter.pt",
                    "--segmenter", segmenter, "--n", 4, "--steps", 2, "--optimise-steps", 1, "--threads", 1,
                    "--out", tmp_path / "report")
    table = (tmp_path / "report" / "sketch_quality.md").read_text()
    assert table in result.stdout and "| method | seg ↓ | lpips-alex ↓ |" in table
    for row in ("E alone", "E + D", "E + D + H, T=1", "E + D + H, T=2", "pix2pix", "real images (reference)",
                "3 iterations + 1 opt. steps"):
        assert f"| {row} |" in table
    assert "n/a (weights missing)" in table
    report = json.loads((tmp_path / "report" / "sketch_quality.json").read_text())
    assert report["held_out"]["n"] == 4 and report["metrics"]["lpips-alex"] == "n/a (weights missing)"
    assert (tmp_path / "report" / "samples.png").is_file()
