"""`s2m train all` with tiny networks: a complete bundle, killed in a subprocess and resumed to the same manifest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from cli.main import app
from s2m_retrieval.model.bundle import MANIFEST, read_manifest, shipped_folder
from s2m_retrieval.errors import BadInputError

GENERATOR_STEPS = 24  # long enough for the kill to land inside the generator stage
TINY = {"generator": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16},
        "segmenter": {"base_channels": 4},
        "encoder": {"widths": [8, 16, 16, 16], "head_width": 8},
        "inverter": {"widths": [8, 16, 16, 16], "head_width": 8},
        "discriminator": {"hidden": 16, "layers": 2},
        "refiner": {"widths": [8, 16], "head_width": 8, "rank": 2},
        "steps": {"segmenter": 3, "generator": GENERATOR_STEPS, "encoder": 3, "refiner": 2, "inverter": 2},
        "batch": {"segmenter": 2, "generator": 2, "encoder": 2, "refiner": 2, "inverter": 2}}
ARGS = ["--threads", "1", "--device", "cpu", "--perceptual", "random", "--pairs-per-image", "1", "--held-out", "4",
        "--snapshot-every", "1", "--config-json", json.dumps(TINY)]
NETWORKS = {"segmenter", "generator", "encoder", "latent_discriminator", "refiner", "inverter"}


def train_all(archive, out, *extra):
    return CliRunner().invoke(app, ["train", "all", str(archive), "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def bundle(phantom_archive, tmp_path_factory):
    """One uninterrupted tiny run (the reference for the resumed one)."""
    out = tmp_path_factory.mktemp("whole") / "ward"
    result = train_all(phantom_archive, out)
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result.stdout


def test_train_all_writes_a_complete_bundle(bundle, phantom_archive):
    out, log = bundle
    manifest = read_manifest(out)
    # `train all` trains every network but the optional projector (`s2m train projector` adds it)
    assert set(manifest["networks"]) == NETWORKS - {"projector"} and manifest["missing"] == ["projector"]
    assert manifest["name"] == "ward"
    assert manifest["networks"]["generator"]["config"]["img_resolution"] == 64
    assert manifest["networks"]["encoder"]["trained"]["step"] == 3
    archive = manifest["archive"]
    assert (archive["n_images"], archive["n_train"], archive["n_held_out"], archive["fit"]) == (24, 20, 4, "crop")
    assert len(archive["fingerprint"]) == 64 and manifest["training"]["steps"]["generator"] == GENERATOR_STEPS
    metrics = manifest["metrics"]
    assert metrics["perceptual_metric"] == "random:0" and metrics["held_out"]["n"] == 4
    assert metrics["held_out"]["files"] == [f"images/ph{i:06d}.png" for i in range(20, 24)]
    assert set(metrics["sketch_to_image"]) == {"E", "E + H, T=1", "E + H, T=2", "E + H, T=3"}
    assert all(0 <= row["dice"] <= 1 and row["perceptual"] > 0 for row in metrics["sketch_to_image"].values())
    assert metrics["domain_fd"]["generated"] > metrics["domain_fd"]["real_vs_real_floor"] >= 0
    assert metrics["inversion"]["psnr"] > 0 and 0 <= metrics["real_image_dice"] <= 1
    assert sorted(p.name for p in (out / "samples").iterdir()) == \
        ["encoder.png", "generator.png", "inverter.png", "refiner.png", "segmenter.png"]
    assert f"next: s2m index build {phantom_archive} --model {out}" in log


def test_a_finished_bundle_is_kept_and_other_settings_are_refused(bundle, phantom_archive):
    out, _ = bundle
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    again = train_all(phantom_archive, out)
    assert again.exit_code == 0 and again.stdout.count("done earlier, kept") == 5
    other = train_all(phantom_archive, out, "--budget", "medium", "--seed", "1")
    assert isinstance(other.exception, BadInputError)
    assert "budget 'small' -> 'medium'" in str(other.exception) and "seed 0 -> 1" in str(other.exception)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}


def test_killed_mid_stage_and_resumed_to_the_same_manifest(bundle, phantom_archive, tmp_path):
    from s2m_retrieval.training.state import load_train_state

    reference, _ = bundle
    out = tmp_path / "ward"  # same folder name: the manifest records it as the bundle's name
    cmd = [sys.executable, "-m", "cli", "train", "all", str(phantom_archive), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = out / "train" / "generator" / "latest.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    step = load_train_state(state)["step"]
    assert 0 < step < GENERATOR_STEPS and not (out / "generator.pt").exists()

    resumed = train_all(phantom_archive, out)
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert "[1/5] segmenter: done earlier, kept" in resumed.stdout
    assert (out / MANIFEST).read_text() == (reference / MANIFEST).read_text()


def hospital_archive(phantom_archive, root):
    """Phantoms as a hospital keeps them, without masks: grey JPEG, a camera JPEG stored rotated with an EXIF
    orientation, non-square images of other sizes, a DICOM photograph with patient tags, plain PNGs."""
    import numpy as np
    from PIL import Image
    from test_dicom import PATIENT, write_dicom

    (root / "2024").mkdir(parents=True)
    for i, path in enumerate(sorted((phantom_archive / "images").iterdir())[:8]):
        image = Image.open(path).convert("RGB")
        if i == 0:
            image.convert("L").save(root / "grey.jpg", quality=90)
        elif i == 1:
            exif = Image.Exif()
            exif[0x0112] = 6  # shown rotated 90 degrees clockwise
            image.rotate(90, expand=True).save(root / "2024" / "camera.jpg", exif=exif, quality=92)
        elif i == 2:
            image.resize((96, 64)).save(root / "wide.png")
        elif i == 3:
            image.resize((48, 80)).save(root / "tall.png")
        elif i == 4:
            write_dicom(root / "photo.dcm", np.asarray(image), "RGB", **PATIENT)
        else:
            image.save(root / f"{path.stem}.png")
    return root


def test_a_hospital_archive_without_masks_trains_and_indexes(phantom_archive, tmp_path):
    from s2m_retrieval.model.archive_encoder import load_encoder

    archive = hospital_archive(phantom_archive, tmp_path / "hospital")
    ones = {"steps": {s: 1 for s in TINY["steps"]}, "batch": TINY["batch"]}
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["train", "all", str(archive), "--out", str(out), *ARGS[:-1],
                                      json.dumps({**TINY, **ones}), "--held-out", "2", "--fit", "pad"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "segmenter: skipped, the archive has no masks/; the shipped phantom segmenter" in result.stdout
    manifest = read_manifest(out)
    shipped = read_manifest(shipped_folder())["networks"]["segmenter"]["version"]
    assert manifest["networks"]["segmenter"]["version"] == shipped
    assert manifest["training"]["segmenter"] == f"shipped {shipped}"
    assert (manifest["archive"]["masks"], manifest["archive"]["fit"], manifest["archive"]["n_images"]) == \
        ("none", "pad", 8)
    assert manifest["metrics"]["held_out"]["masks"] == "segmenter"

    assert load_encoder("inverter:perceptual=random", out).fit == "pad"  # index builds square as training did
    home = tmp_path / "home"
    built = CliRunner().invoke(app, ["index", "build", str(archive), "--home", str(home), "--model", str(out),
                                     "--encoder", "inverter:perceptual=random", "--json"])
    assert built.exit_code == 0, (built.output, built.exception)
    summary = json.loads(built.stdout)
    assert summary["added"] == 8 and summary["bad"] == []


def test_bad_options_are_one_line_errors(phantom_archive, tmp_path):
    for extra, message in ((["--res", "96"], "--res must be one of 64, 128, 256"),
                           (["--budget", "huge"], "--budget must be one of small, medium, large"),
                           (["--fit", "stretch"], "--fit must be crop or pad"),
                           (["--held-out", "30"], "has 24 images; training needs at least 32")):
        result = CliRunner().invoke(app, ["train", "all", str(phantom_archive), "--out", str(tmp_path / "x"),
                                          "--threads", "1", *extra])
        assert result.exception is not None and message in str(result.exception), (extra, result.output)
    assert not (tmp_path / "x").exists()
    inside = CliRunner().invoke(app, ["train", "all", str(phantom_archive), "--out", str(phantom_archive / "m")])
    assert "is inside the archive" in str(inside.exception) and not (phantom_archive / "m").exists()
