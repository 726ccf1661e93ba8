"""Training curves: every kind of training, tiny and through the CLI, leaves TensorBoard event files (read back
with tensorboard's reader, or the CSV without it), tb/scalars.csv and curves.png; resumed runs continue them."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.training import curves as curves_module
from s2m_retrieval.training.curves import CSV_FILE, PNG_FILE, TB_DIR, TrainCurves, read_scalars

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
TINY_E = {"encoder": {"widths": [8, 16, 16, 16], "head_width": 8}, "discriminator": {"hidden": 16, "layers": 2}}
BASE = ["--batch", "2", "--limit", "6", "--threads", "1"]
QUICK = BASE + ["--pairs-per-image", "1", "--perceptual", "random"]
STAGES = ("segmenter", "generator", "encoder", "refiner", "inverter")
TINY_BUNDLE = {"generator": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16},
               "segmenter": {"base_channels": 4}, "refiner": {"widths": [8, 16], "head_width": 8, "rank": 2},
               "encoder": TINY_E["encoder"], "inverter": TINY_E["encoder"], "discriminator": TINY_E["discriminator"],
               "steps": {stage: 2 for stage in STAGES}, "batch": {stage: 2 for stage in STAGES}}


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from the event files (tensorboard's own reader), else from the CSV."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return read_scalars(run_dir)
    events = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def image_tags(run_dir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


@pytest.fixture(scope="module")
def runs(phantom_archive, tmp_path_factory):
    """One tiny run of every kind of training (E resumed once), and a tiny `s2m train all`."""
    root = tmp_path_factory.mktemp("curves")
    torch.manual_seed(0)
    G = Generator(TINY_G)
    g = save_checkpoint(root / "g.pt", kind="generator", config=TINY_G, state_dict=G.state_dict(), w_avg=G.w_avg)
    arch = phantom_archive
    log = {}
    for steps in (2, 4):
        log["encoder"] = invoke("train", "encoder", arch, "--generator", g, "--out", root / "encoder", "--steps",
                                steps, "--snapshot-every", 2, *QUICK, "--config-json", json.dumps(TINY_E))
    invoke("train", "inverter", "phantom:4:1", "--generator", g, "--out", root / "inverter", "--steps", 2,
           "--iterations", 2, *BASE, "--perceptual", "random", "--config-json", json.dumps(TINY_E))
    invoke("train", "encoder", arch, "--generator", g, "--out", root / "index", "--objective", "index",
           "--inverter", root / "inverter" / "inverter.pt", "--init", root / "encoder" / "encoder.pt", "--steps", 2,
           *QUICK, "--config-json", json.dumps({"train": {"negatives": 4, "image_every": 1, "image_batch": 1}}))
    invoke("train", "refiner", arch, "--generator", g, "--encoder", root / "encoder" / "encoder.pt", "--out",
           root / "refiner", "--steps", 2, "--refine-steps", 2, *QUICK,
           "--config-json", json.dumps({"refiner": {"widths": [8, 16], "head_width": 8, "rank": 2}}))
    invoke("train", "pix2pix", "phantom:4:1", "--res", 32, "--out", root / "pix2pix", "--steps", 2, *BASE,
           "--pairs-per-image", 1, "--config-json", json.dumps({"pix2pix": {"base_channels": 8, "max_channels": 16},
                                                                 "discriminator": {"base_channels": 8,
                                                                                   "max_channels": 16}}))
    invoke("train", "embedding", arch, "--res", 32, "--out", root / "embedding", "--steps", 2, *BASE,
           "--pairs-per-image", 1, "--config-json", json.dumps({"embedding": {"widths": [4, 8], "dim": 8}}))
    log["segmenter"] = invoke("train", "segmenter", arch, "--out", root / "seg.pt", "--res", 32, "--steps", 3,
                              "--batch", 2, "--limit", 8, "--threads", 1)
    log["generator"] = invoke("train", "generator", arch, "--out", root / "generator", "--res", 32, "--kimg", 0.006,
                              "--batch", 2, "--channel-base", 256, "--channel-max", 16, "--snapshot-every", 2,
                              "--limit", 6)
    log["all"] = invoke("train", "all", arch, "--out", root / "bundle", "--threads", 1, "--device", "cpu",
                        "--perceptual", "random", "--pairs-per-image", 1, "--held-out", 4, "--snapshot-every", 1,
                        "--config-json", json.dumps(TINY_BUNDLE))
    return root, log


KINDS = {  # run folder -> (steps, tags it must log)
    "encoder": (4, {"loss/fitted", "terms/l2", "terms/perceptual", "terms/adv", "terms/d", "lr/E", "lr/D",
                    "time/sec_per_step"}),
    "inverter": (2, {"loss/fitted", "terms/l2", "lr/E", "time/sec_per_step"}),
    "index": (2, {"loss/fitted", "terms/distill", "terms/nce", "terms/batch_acc", "lr/E"}),
    "refiner": (2, {"loss/fitted", "terms/l2_1", "terms/l2_2", "lr/H"}),
    "pix2pix": (2, {"loss/fitted", "terms/l1", "terms/adv", "terms/d", "lr/G", "lr/D"}),
    "embedding": (2, {"loss/fitted", "terms/batch_acc", "lr/embedding"}),
    "seg_curves": (3, {"loss/fitted", "lr/segmenter", "time/sec_per_step", "heldout/mean_dice"}),
    "generator": (3, {"loss/G", "loss/D", "terms/r1", "progress/kimg", "lr/G", "lr/D", "time/sec_per_step"}),
    **{f"bundle/train/{stage}": (2, {"loss/fitted"} if stage != "generator" else {"loss/G", "loss/D"})
       for stage in STAGES},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_training_leaves_readable_curves(runs, kind):
    root, _ = runs
    run_dir = root / kind
    steps, tags = KINDS[kind]
    logged = scalars(run_dir)
    assert tags <= set(logged), sorted(logged)
    assert [s for s, _ in logged[min(t for t in tags if t.startswith("loss/"))]] == list(range(1, steps + 1))
    from_csv = read_scalars(run_dir)
    assert set(from_csv) == set(logged)
    for tag, points in logged.items():
        assert [s for s, _ in from_csv[tag]] == [s for s, _ in points]
        assert [v for _, v in from_csv[tag]] == pytest.approx([v for _, v in points], rel=1e-6)
    with Image.open(run_dir / PNG_FILE) as png:
        assert png.format == "PNG" and png.width > 300


def test_sample_grids_go_into_the_event_files(runs):
    pytest.importorskip("tensorboard")
    root, _ = runs
    assert image_tags(root / "encoder") == {"samples/encoder": [2, 4]}
    assert image_tags(root / "generator") == {"samples/fakes": [3], "samples/reals": [0]}
    assert image_tags(root / "bundle" / "train" / "refiner") == {"samples/refiner": [2]}


def test_commands_say_where_the_curves_are(runs):
    root, log = runs
    assert f"training curves: {root / 'encoder' / PNG_FILE}" in log["encoder"]
    assert f"tensorboard --logdir {root / 'seg_curves'}" in log["segmenter"]
    assert f"training curves: {root / 'generator' / PNG_FILE}" in log["generator"]
    assert f"tensorboard --logdir {root / 'bundle' / 'train'}" in log["all"]


def test_a_resumed_run_drops_what_a_killed_one_logged_after_its_snapshot(tmp_path):
    first = TrainCurves(tmp_path, start_step=0)
    for step in range(1, 6):
        first.add(step, {"loss/fitted": float(step)})
    first.flush()  # killed after step 5; its last snapshot was at step 3
    second = TrainCurves(tmp_path, start_step=3)
    for step in (4, 5, 6):
        second.add(step, {"loss/fitted": 10.0 * step}, last=step == 6)
    second.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert read_scalars(tmp_path)["loss/fitted"] == expected
    assert [s for s, _ in scalars(tmp_path)["loss/fitted"]] == [s for s, _ in expected]
    assert [v for _, v in scalars(tmp_path)["loss/fitted"]] == pytest.approx([v for _, v in expected])


def test_long_runs_are_averaged_into_windows(tmp_path):
    log = TrainCurves(tmp_path)
    every = curves_module.steps_per_point(20 * curves_module.MAX_POINTS)
    assert every == 20
    for step in range(1, 41):
        log.add(step, {"loss/fitted": float(step)}, every=every, last=step == 40)
    log.close()
    assert read_scalars(tmp_path)["loss/fitted"] == [(20, 10.5), (40, 30.5)]


def test_without_tensorboard_the_csv_and_png_are_written(tmp_path, monkeypatch):
    from s2m_retrieval.training.pairs import phantom_pairs
    from s2m_retrieval.training.pix2pix import Pix2PixTrainConfig, patch_config_for, pix2pix_config_for, train_pix2pix

    monkeypatch.setattr(curves_module, "summary_writer", lambda log_dir, purge_step: None)
    pairs = phantom_pairs(4, 32, variants=1, seed=1)
    small = {"base_channels": 8, "max_channels": 16}
    train_pix2pix(pairs, tmp_path, pix2pix_config_for(32, **small), patch_config_for(32, **small),
                  Pix2PixTrainConfig(steps=3, batch=2, snapshot_every=2, sample_every=2), progress=lambda p: None)
    assert sorted(p.name for p in (tmp_path / TB_DIR).iterdir()) == [CSV_FILE]
    assert [s for s, _ in read_scalars(tmp_path)["terms/l1"]] == [1, 2, 3] and (tmp_path / PNG_FILE).is_file()
