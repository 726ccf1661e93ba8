"""Tests of the sketch sets of `s2m eval sketch2medi`: seeded drawing in make-queries' styles, the generalization gap,
the realism proxy, and the command end to end on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.data import query_styles
from s2m_retrieval.generation.quality import domain_features, realism_accuracy
from s2m_retrieval.generation.sketch_quality import (DEFAULT_SETS, GAP_REALISM, REALISM, REFERENCE, held_out_phantoms,
                                                     load_models, parse_sets, quality_markdown, redraw,
                                                     sketch_sets_quality)
from s2m_retrieval.model.perceptual import load_perceptual
from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.testing.random_models import write_random_models
from retrieval_helpers import cli_error

SEG = SegmenterConfig(base_channels=4, depth=2, img_resolution=32)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(SEG).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, segmenter):
    """Random tiny G, E, H, inverter (write_random_models) and the tiny segmenter, as checkpoint files."""
    root = write_random_models(tmp_path_factory.mktemp("sets"))
    seg = save_checkpoint(root / "seg.pt", kind="segmenter", config=SEG, state_dict=segmenter.state_dict())
    return root, seg


def test_sets_are_drawn_deterministically_from_the_seed(monkeypatch):
    styles = []
    draw = query_styles.draw_query
    monkeypatch.setattr(query_styles, "draw_query",
                        lambda mask, style, **kw: styles.append(style) or draw(mask, style, **kw))
    held = held_out_phantoms(4, 32, seed=3, start=100)
    unseen = redraw(held, "unseen")
    assert styles == [query_styles.QUERY_STYLES["unseen"]] * 4                 # make-queries' own drawing, reused
    again = held_out_phantoms(4, 32, seed=3, start=100, sketch_set="unseen")
    assert np.array_equal(unseen.sketches, again.sketches) and unseen.sketch_set == again.sketch_set == "unseen"
    assert unseen.images is held.images and unseen.reference is held.reference and unseen.masks is held.masks
    assert np.array_equal(held.images[0], make_phantom(3, 100, 32)[0])
    assert unseen.sketches.shape == held.sketches.shape == (4, 32, 32) and unseen.sketches.dtype == np.uint8
    assert not np.array_equal(unseen.sketches, held.sketches)
    other = held_out_phantoms(4, 32, seed=4, start=100, sketch_set="unseen")
    assert not np.array_equal(other.sketches, unseen.sketches)
    traced = redraw(held, "traced")
    assert np.array_equal(traced.sketches, redraw(held, "traced").sketches)
    assert not np.array_equal(traced.sketches, unseen.sketches)
    assert all((s < 128).any() and (s > 128).any() for s in (*held.sketches, *unseen.sketches, *traced.sketches))


def test_unknown_sketch_sets_are_refused():
    assert parse_sets(" unseen,synthesized,unseen ") == ("unseen", "synthesized")
    assert DEFAULT_SETS == parse_sets("synthesized,unseen")
    for text in ("synthesized,freehand", "", " , "):
        with pytest.raises(BadInputError) as exc:
            parse_sets(text)
        assert "choose from synthesized, unseen, traced" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(BadInputError, match="'freehand'"):
        redraw(held_out_phantoms(2, 32), "freehand")


def test_realism_proxy_is_chance_for_real_and_one_for_noise(segmenter):
    real = np.stack([make_phantom(5, i, 32)[0] for i in range(80)])
    other = np.stack([make_phantom(5, i, 32)[0] for i in range(80, 160)])
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    feats = {name: domain_features(x, segmenter) for name, x in (("real", real), ("other", other), ("noise", noise))}
    assert abs(realism_accuracy(feats["real"], feats["other"]) - 0.5) < 0.15
    assert realism_accuracy(feats["real"], feats["noise"]) > 0.95
    assert realism_accuracy(feats["real"], feats["real"]) == 0.5          # the same features: no side to take
    gauss = np.random.default_rng(1).normal(size=(200, 8))
    assert realism_accuracy(gauss[:100], gauss[100:] + 2.0) > 0.95         # a shift in every feature
    assert 0.35 < realism_accuracy(gauss[:100], gauss[100:]) < 0.65
    with pytest.raises(ValueError, match="realism"):
        realism_accuracy(gauss[:1], gauss[1:3])


def test_gap_is_each_set_minus_the_synthesized_one(files, segmenter):
    root, _ = files
    models = load_models(root / "generator.pt", encoder=root / "encoder.pt", refiner=root / "refiner.pt",
                         inverter=root / "inverter.pt")
    held = held_out_phantoms(6, 32, seed=3, start=100)
    sets = {"synthesized": held, "unseen": redraw(held, "unseen"), "traced": redraw(held, "traced")}
    stages = set()
    report, outputs = sketch_sets_quality(sets, models, segmenter, {"random": load_perceptual("random")},
                                          max_steps=1, optimise_steps=0, batch=4,
                                          progress=lambda stage, done, total: stages.add(stage))
    assert list(report["sketch_sets"]) == list(outputs) == list(sets) and set(report["gap"]) == {"unseen", "traced"}
    assert report["sketch_to_image"] == report["sketch_sets"]["synthesized"]["sketch_to_image"]
    assert "invert" in "".join(stages) and len(report["inversion"]) == 3 and "sketch_set" not in report
    methods = ["E + D", "E + D + H, T=1"]
    base = {row["method"]: row for row in report["sketch_sets"]["synthesized"]["sketch_to_image"]}
    for name, gap in report["gap"].items():
        rows = {row["method"]: row for row in report["sketch_sets"][name]["sketch_to_image"]}
        assert [row["method"] for row in gap] == methods and list(rows) == methods + [REFERENCE]
        assert rows[REFERENCE] == base[REFERENCE]                         # the same images in every set
        assert not np.array_equal(outputs[name]["E + D"], outputs["synthesized"]["E + D"])
        for row in gap:
            b, a = rows[row["method"]], base[row["method"]]
            for key in ("dice", "fd", "realism"):
                assert row[key] == pytest.approx(b[key] - a[key])
            assert row["perceptual"]["random"] == pytest.approx(b["perceptual"]["random"] - a["perceptual"]["random"])
            assert 0 <= b["realism"] <= 1
    table = quality_markdown(report)
    assert "Generalization gap" in table and "| E + D (unseen − synthesized) | " in table
    assert f"| method | random ↓ | DICE S(x̂) vs mask ↑ | domain FD ↓ | {REALISM} |" in table
    assert f"| {GAP_REALISM} |" in table and "not a human opinion score" in table
    assert table.count(f"| {REFERENCE} |") == 3


def test_the_command_measures_every_set_end_to_end(files, tmp_path, capsys):
    from typer.testing import CliRunner

    from cli.main import app

    root, seg = files
    base = ["eval", "sketch2medi", "--generator", str(root / "generator.pt"), "--encoder", str(root / "encoder.pt"),
            "--refiner", str(root / "refiner.pt"), "--segmenter", str(seg), "--metrics", "random", "--n", "4",
            "--steps", "1", "--threads", "1"]
    result = CliRunner().invoke(app, base + ["--out", str(tmp_path / "all"), "--sets", "synthesized,unseen,traced"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((tmp_path / "all" / "sketch_quality.json").read_text())
    assert list(report["sketch_sets"]) == ["synthesized", "unseen", "traced"] and list(report["gap"]) == ["unseen",
                                                                                                        "traced"]
    assert report["sketch_sets"]["unseen"]["style"] == {**query_styles.QUERY_STYLES["unseen"].__dict__}
    table = (tmp_path / "all" / "sketch_quality.md").read_text()
    assert table in result.stdout and "Sketch set traced:" in table and "(traced − synthesized)" in table
    for name in ("samples.png", "samples_unseen.png", "samples_traced.png"):
        assert (tmp_path / "all" / name).is_file()
    result = CliRunner().invoke(app, base + ["--out", str(tmp_path / "traced"), "--sets", "traced"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((tmp_path / "traced" / "sketch_quality.json").read_text())
    assert report["gap"] == {} and "no generalization gap: the sets do not include synthesized" in report["notes"]
    code, err = cli_error(capsys, base + ["--out", str(tmp_path / "bad"), "--sets", "synthesized,scribble"])
    assert code != 0 and "unknown sketch set 'scribble'" in err and not (tmp_path / "bad").exists()
