"""Multi-frame DICOM files: --frames first|middle|all, each frame its own keyed entry, stable across builds."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_dicom import write_dicom

from cli.main import app
from s2m_retrieval.data.archive import read_image, split_frame_key
from s2m_retrieval.data.dicom import pick_frames
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
from s2m_retrieval.ingest.report import verify_index
from s2m_retrieval.ingest.sync import remove_entries
from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index

ENC = FakeEncoder(FakeEncoderConfig(resolution=16, grid=4, thumb=4, dim=8))
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]  # frame k of the colour cine is COLOURS[k]
GREYS = [1000, 2000, 3000]  # frame k of the grey cine holds GREYS[k]; its window 0..4000 maps them to WINDOWED[k]
WINDOWED = [64, 128, 191]


def _solid(value, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(value), shape).copy()


@pytest.fixture
def frames_archive(tmp_path):
    """A 3-frame RGB cine, a 3-frame 16-bit grey cine with a window, and a single-frame file."""
    root = tmp_path / "archive"
    root.mkdir()
    write_dicom(root / "cine.dcm", np.stack([_solid(c, (32, 32, 3)).astype(np.uint8) for c in COLOURS]), "RGB",
                frames=3)
    write_dicom(root / "dose.dcm", np.stack([_solid(g, (32, 32)).astype(np.uint16) for g in GREYS]), "MONOCHROME2",
                frames=3, WindowCenter=2000, WindowWidth=4000)
    write_dicom(root / "single.dcm", _solid((90, 90, 90), (32, 32, 3)).astype(np.uint8), "RGB")
    return root


def _rows(home) -> dict[str, dict]:
    con = sqlite3.connect(home / "s2m.db")
    try:
        return {path.rsplit("/", 1)[-1]: json.loads(labels) for path, labels in
                con.execute("select images.path, images.labels from images join vectors on vectors.image_id = "
                            "images.id")}
    finally:
        con.close()


def _thumb_means(home) -> dict[str, tuple[int, ...]]:
    """Each entry's stored thumbnail, as its mean colour: which frame was really read."""
    from s2m_retrieval.query.index_reader import open_index

    with open_index(home=home) as reader:
        images = reader.images(list(map(int, reader.store.ids())))
        thumbs = reader.arrays("thumbs", list(images))
    return {images[i]["path"].rsplit("/", 1)[-1]: tuple(int(v) for v in t.reshape(-1, 3).mean(0).round())
            for i, t in zip(images, thumbs)}


def test_pick_frames_and_reading_one_frame(frames_archive):
    assert pick_frames(5, "first") == [0] and pick_frames(5, "middle") == [2] and pick_frames(4, "middle") == [2]
    assert pick_frames(3, "all") == [0, 1, 2] and pick_frames(1, "middle") == [0]
    with pytest.raises(BadInputError, match="unknown --frames 'last'"):
        pick_frames(3, "last")
    for k, colour in enumerate(COLOURS):
        assert (read_image(frames_archive / "cine.dcm", frame=k) == colour).all()
    # each frame windowed as the file says (0..4000), not by its own range (which would make every frame black)
    assert [int(read_image(frames_archive / "dose.dcm", frame=k)[0, 0, 0]) for k in range(3)] == WINDOWED
    assert split_frame_key("/a/cine.dcm#frame=12") == ("/a/cine.dcm", 12)
    assert split_frame_key("/a/cine.dcm") == ("/a/cine.dcm", None)


def test_enhanced_multi_frame_windows_come_from_the_functional_groups(tmp_path):
    """Enhanced CT/MR objects carry no top-level window: each frame's is in its functional group."""
    path = tmp_path / "enhanced.dcm"
    write_dicom(path, np.stack([_solid(2000, (8, 8)).astype(np.uint16)] * 2), "MONOCHROME2", frames=2)
    import pydicom

    ds = pydicom.dcmread(path)

    def group(centre, width):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = centre, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        return item
    ds.PerFrameFunctionalGroupsSequence = Sequence([group(2000, 4000), group(4000, 4000)])
    ds.save_as(path)
    assert [int(read_image(path, frame=k)[0, 0, 0]) for k in range(2)] == [128, 0]


@pytest.mark.parametrize("frames, expected", [
    ("first", {"cine.dcm#frame=0": 0, "dose.dcm#frame=0": 0, "single.dcm": None}),
    ("middle", {"cine.dcm#frame=1": 1, "dose.dcm#frame=1": 1, "single.dcm": None}),
    ("all", {**{f"cine.dcm#frame={k}": k for k in range(3)}, **{f"dose.dcm#frame={k}": k for k in range(3)},
             "single.dcm": None}),
])
def test_each_frames_choice_indexes_its_frames_once(frames_archive, tmp_path, frames, expected):
    home = tmp_path / "home"
    options = BuildOptions(frames=frames, batch_size=2)
    summary = build_index(frames_archive, ENC, home=home, options=options)
    assert (summary.added, summary.bad, summary.total) == (len(expected), [], len(expected))
    rows = _rows(home)
    assert {name: labels.get("frame") for name, labels in rows.items()} == expected
    assert rows["single.dcm"]["Modality"] == "XC" and rows[next(iter(expected))]["Modality"] == "XC"
    means = _thumb_means(home)
    for name, frame in expected.items():  # the stored thumbnail is the frame itself
        if name.startswith("cine"):
            assert means[name] == COLOURS[frame]
        elif name.startswith("dose"):
            assert means[name] == (WINDOWED[frame],) * 3
    again = build_index(frames_archive, ENC, home=home)  # the index's own choice; nothing new, nothing twice
    assert (again.added, again.replaced, again.skipped, again.total) == (0, 0, len(expected), len(expected))
    assert verify_index(home=home).ok


def test_interrupted_build_resumes_without_duplicates(frames_archive, tmp_path):
    home = tmp_path / "home"
    done = []

    def stop_after_first_batch(n, total):
        done.append(n)
        if sum(done) >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="all", batch_size=2),
                    progress=stop_after_first_batch)
    assert len(_rows(home)) == 2  # one batch committed: two frames of cine.dcm
    resumed = build_index(frames_archive, ENC, home=home)
    assert (resumed.added, resumed.skipped, resumed.total) == (5, 2, 7)
    assert len(_rows(home)) == 7 and verify_index(home=home).ok


def test_removed_frames_and_files_stay_out_of_builds_and_rebuilds(frames_archive, tmp_path):
    home = tmp_path / "home"
    build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="all"))
    from s2m_retrieval.query.index_reader import open_index

    with open_index(home=home) as reader:
        ids = {row["path"].rsplit("/", 1)[-1]: i for i, row in
               reader.images(list(map(int, reader.store.ids()))).items()}
    report = remove_entries([str(ids["cine.dcm#frame=1"])], home=home)
    assert list(report.removed.values()) == [str(frames_archive / "cine.dcm#frame=1")] and report.total == 6
    for rebuild in (False, True):
        summary = build_index(frames_archive, ENC, home=home, options=BuildOptions(rebuild=rebuild))
        assert (summary.excluded, summary.total) == (1, 6) and "cine.dcm#frame=1" not in _rows(home)
    with pytest.raises(BadInputError, match="'dose' names 3 images"):  # a stem stays one image's name
        remove_entries(["dose"], home=home)
    # a file's path removes all its frames, and keeps the file out whole
    report = remove_entries([str(frames_archive / "dose.dcm")], home=home)
    assert len(report.removed) == 3 and report.total == 3
    summary = build_index(frames_archive, ENC, home=home, options=BuildOptions(rebuild=True))
    assert summary.total == 3 and set(_rows(home)) == {"cine.dcm#frame=0", "cine.dcm#frame=2", "single.dcm"}
    # naming the files again brings every frame back
    back = add_files([frames_archive / "cine.dcm", frames_archive / "dose.dcm"], ENC, home=home)
    assert (back.added, back.total) == (4, 7) and verify_index(home=home).ok


def test_a_changed_file_keeps_no_frames_it_lost(frames_archive, tmp_path):
    home = tmp_path / "home"
    build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="all"))
    write_dicom(frames_archive / "cine.dcm", np.stack([_solid(c, (32, 32, 3)).astype(np.uint8)
                                                       for c in COLOURS[:2]]), "RGB", frames=2)
    summary = build_index(frames_archive, ENC, home=home)
    assert (summary.replaced, summary.removed, summary.total) == (2, 1, 6) and summary.missing == []
    assert "cine.dcm#frame=2" not in _rows(home) and verify_index(home=home).ok


def test_relabelling_keeps_what_the_file_itself_says(frames_archive, tmp_path):
    """An edited labels.csv reaches unchanged frames; their frame number and DICOM tags stay."""
    home = tmp_path / "home"
    (frames_archive / "labels.csv").write_text("id,grade\ncine,1\nsingle,1\n")
    build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="all"))
    (frames_archive / "labels.csv").write_text("id,grade\ncine,2\nsingle,3\n")
    summary = build_index(frames_archive, ENC, home=home)
    rows = _rows(home)
    assert summary.relabelled == 4 and rows["cine.dcm#frame=2"]["grade"] == 2 and rows["single.dcm"]["grade"] == 3
    assert rows["cine.dcm#frame=2"]["frame"] == 2 and rows["cine.dcm#frame=2"]["Modality"] == "XC"
    assert rows["single.dcm"]["Modality"] == "XC"


def test_another_frames_choice_is_refused_until_a_rebuild(frames_archive, tmp_path, runner):
    home = tmp_path / "home"
    build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="all"))
    with pytest.raises(BadInputError, match="holds --frames all .* not first; .*--rebuild --frames first"):
        build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="first"))
    with pytest.raises(BadInputError, match="holds --frames all"):
        add_files([frames_archive / "cine.dcm"], ENC, home=home, options=BuildOptions(frames="middle"))
    assert len(_rows(home)) == 7
    changed = build_index(frames_archive, ENC, home=home, options=BuildOptions(frames="middle", rebuild=True))
    assert changed.total == 3 and set(_rows(home)) == {"cine.dcm#frame=1", "dose.dcm#frame=1", "single.dcm"}
    kept = build_index(frames_archive, ENC, home=home, options=BuildOptions(rebuild=True))  # keeps middle
    assert kept.total == 3 and set(_rows(home)) == {"cine.dcm#frame=1", "dose.dcm#frame=1", "single.dcm"}

    args = ["--home", str(home), "--encoder", "fake:resolution=16,grid=4,thumb=4,dim=8"]
    for command in (["index", "build", str(frames_archive)], ["index", "add", str(frames_archive / "cine.dcm")]):
        result = runner.invoke(app, [*command, *args, "--frames", "every"])
        assert result.exit_code != 0
        assert "unknown --frames 'every' (one of: first, middle, all)" in str(result.exception)
    info = runner.invoke(app, ["index", "info", "--home", str(home)])
    assert "frames       middle" in info.stdout


def test_retrieve_shows_the_frame_of_each_hit(frames_archive, tmp_path, runner, setup):
    home = tmp_path / "home"
    result = runner.invoke(app, ["index", "build", str(frames_archive), "--home", str(home), "--encoder",
                                 setup.encoder_spec, "--frames", "all"])
    assert result.exit_code == 0, result.output
    base = ["retrieve", "--home", str(home), "--model", str(setup.models), "--k", "7"]
    out = runner.invoke(app, [*base, "--like", str(frames_archive / "single.dcm"), "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.stdout)["hits"]
    frames = {h["path"].rsplit("/", 1)[-1]: h["labels"].get("frame") for h in hits}
    assert frames == {**{f"cine.dcm#frame={k}": k for k in range(3)}, **{f"dose.dcm#frame={k}": k for k in range(3)},
                      "single.dcm": None}
    table = runner.invoke(app, [*base, "--like", str(frames_archive / "single.dcm")]).stdout.splitlines()
    header = next(line for line in table if line.startswith("rank"))
    assert header.split()[6] == "frame"
    row = next(line for line in table if "cine.dcm#frame=2" in line)
    assert row.split()[6] == "2"
    # one frame by its image id: its own stored vector is the query, so it comes first
    frame_id = next(h["id"] for h in hits if h["path"].endswith("cine.dcm#frame=2"))
    out = runner.invoke(app, [*base, "--like", str(frame_id), "--json"])
    top = json.loads(out.stdout)["hits"][0]
    assert top["path"].endswith("cine.dcm#frame=2") and top["labels"]["frame"] == 2 and top["latent_distance"] == 0
    # the path of a multi-frame file names each of its frames: --like wants the one image
    many = runner.invoke(app, [*base, "--like", str(frames_archive / "cine.dcm")])
    assert many.exit_code != 0 and "names 3 images" in str(many.exception)


def test_the_service_serves_the_original_of_one_frame(frames_archive, tmp_path, runner, setup):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from s2m_retrieval.query.engine import RetrievalEngine
    from s2m_retrieval.service import create_app

    home = tmp_path / "home"
    result = runner.invoke(app, ["index", "build", str(frames_archive), "--home", str(home), "--encoder",
                                 setup.encoder_spec, "--frames", "all"])
    assert result.exit_code == 0, result.output
    with RetrievalEngine.open("default", home=home, models=setup.models) as engine, \
            TestClient(create_app(engine)) as client:
        images = engine.reader.images(list(map(int, engine.reader.store.ids())))
        image_id = next(i for i, row in images.items() if row["path"].endswith("dose.dcm#frame=1"))
        original = client.get(f"/v1/images/{image_id}", params={"size": "original"})
    assert original.status_code == 200, original.text
    decoded = np.asarray(Image.open(io.BytesIO(original.content)).convert("RGB"))
    assert np.array_equal(decoded, read_image(frames_archive / "dose.dcm", frame=1))
    assert int(decoded.mean()) == WINDOWED[1]
