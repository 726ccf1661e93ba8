"""Bad inputs (issue 19): each one a one-line error with a non-zero exit, or the right answer; never a traceback,
a silent wrong answer, or a lost edit."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval_helpers import phantom_sketch
from s2m_retrieval.data.archive import ReadStats, iter_batches, read_image, scan_archive
from s2m_retrieval.errors import BadImageError, BadInputError, UnsupportedImageError
from s2m_retrieval.query.engine import read_sketch
from s2m_retrieval.service.uploads import decode_sketch

SKETCH = phantom_sketch()           # [64, 64] uint8, dark strokes on white
INK = SKETCH < 128


@dataclass
class Run:
    """What one CLI run through `cli.main` (the one place errors become messages) left behind."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `s2m ARGS...` in this process, as the console script does (domain errors -> one line, exit code)."""
    from cli.main import _run, app

    def run(*args) -> Run:
        capsys.readouterr()
        try:
            _run(app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def _one_line_error(result: Run, needle: str, code: int | None = None) -> str:
    """A failed run with one line on stderr naming `needle` (and so no traceback)."""
    assert result.code != 0, result.stdout
    if code is not None:
        assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    return lines[0]


def _sketch_in_mode(mode: str) -> Image.Image:
    """The test sketch as a Pillow image of `mode`, with the same strokes (16-bit and float at full range)."""
    grey = SKETCH.astype(np.float64) / 255.0
    if mode in ("I;16", "I"):
        deep = (grey * 65535).round()
        return Image.fromarray(deep.astype(np.uint16)) if mode == "I;16" else Image.fromarray(deep.astype(np.int32))
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32), mode="F")
    if mode == "1":
        return Image.fromarray(SKETCH).convert("1", dither=Image.Dither.NONE)
    if mode in ("LA", "RGBA"):  # ink opaque, paper transparent (any colour underneath)
        base = Image.fromarray(np.where(INK, 0, 90).astype(np.uint8)).convert(mode[:-1])
        base.putalpha(Image.fromarray(np.where(INK, 255, 0).astype(np.uint8)))
        return base
    return Image.fromarray(SKETCH).convert(mode)


MODES = ["1", "L", "LA", "P", "I;16", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_as_the_same_sketch(tmp_path, mode):
    img = _sketch_in_mode(mode)
    path = tmp_path / ("s.tif" if mode in ("F", "I", "CMYK", "YCbCr") else "s.png")
    img.save(path)
    assert Image.open(path).mode == mode or mode == "YCbCr"  # TIFF stores YCbCr as RGB
    grey = read_sketch(path)
    assert grey.shape == SKETCH.shape
    assert np.array_equal(grey < 128, INK), f"{mode}: {(grey < 128).sum()} ink pixels, want {INK.sum()}"
    # HTTP decodes the same bytes to the same sketch.
    from s2m_retrieval.query.engine import as_grey_sketch

    assert np.array_equal(as_grey_sketch(decode_sketch(path.read_bytes(), 1 << 24, 1 << 20)), grey)
    # The archive reader sees the same structure (transparency on black there, so only opaque modes compare).
    if "A" not in mode:
        assert np.array_equal(read_image(path).min(axis=2) < 128, INK)


def test_sixteen_bit_grey_keeps_its_strokes_and_scale(tmp_path):
    deep = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png")[0, :, 0].tolist() == [0, 4, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F").save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied_to_cli_sketches(tmp_path):
    stored = Image.fromarray(SKETCH).transpose(Image.Transpose.ROTATE_90)  # as a phone stores a turned photo
    exif = Image.Exif()
    exif[0x0112] = 6  # display: rotate 90 degrees clockwise
    path = tmp_path / "turned.png"
    stored.save(path, exif=exif.tobytes())
    assert np.array_equal(read_sketch(path), SKETCH)
    assert np.array_equal(read_sketch(path), decode_sketch(path.read_bytes(), 1 << 24, 1 << 20).min(axis=2))


def _gif(path: Path) -> Path:
    Image.fromarray(SKETCH).save(path, format="GIF")
    return path


def test_one_list_of_formats_gif_refused_everywhere(tmp_path):
    gif = _gif(tmp_path / "s.gif")
    for read in (read_sketch, read_image, lambda p: decode_sketch(p.read_bytes(), 1 << 24, 1 << 20)):
        with pytest.raises(UnsupportedImageError, match="GIF images are not accepted"):
            read(gif)
    # A build lists it and counts it with its reason (not skipped silently).
    archive = tmp_path / "archive"
    archive.mkdir()
    Image.fromarray(np.stack([SKETCH] * 3, -1)).save(archive / "a.png")
    shutil.copy(gif, archive / "b.gif")
    (archive / "notes.txt").write_text("not an image name: not listed")
    stats = ReadStats()
    entries = scan_archive(archive)
    assert [e.rel for e in entries] == ["a.png", "b.gif"]
    assert sum(len(b.entries) for b in iter_batches(entries, 4, 16, stats=stats)) == 1
    assert stats.bad_files == [(str(archive / "b.gif"), "GIF images are not accepted")]


def test_paths_say_what_they_are(tmp_path):
    loop = tmp_path / "loop.png"
    os.symlink(tmp_path / "loop2.png", loop)
    os.symlink(loop, tmp_path / "loop2.png")
    cases = [(tmp_path, "is a folder; give the sketch file itself"), (loop, "Too many levels of symbolic links"),
             (tmp_path / "absent.png", "sketch file not found")]
    for path, needle in cases:
        with pytest.raises(BadImageError, match=needle):
            read_sketch(path)
    with pytest.raises(BadImageError, match="Too many levels"):
        read_image(loop)


def _image(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_sketch_refuses_images_without_anatomy(cli, tmp_path):
    rng = np.random.default_rng(0)
    cases = {"blank": (np.full((64, 64, 3), 255, np.uint8), "one colour"),
             "black": (np.zeros((64, 64, 3), np.uint8), "one colour"),
             "dot": (np.full((1, 1, 3), 128, np.uint8), "1x1 pixels"),
             "noise": (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "pixel noise")}
    for name, (array, needle) in cases.items():
        out = tmp_path / f"{name}-sketch.png"
        result = cli("sketch", _image(tmp_path / f"{name}.png", array), "--out", out)
        _one_line_error(result, needle, code=2)
        assert not out.exists()


def test_sketch_checks_its_mask_and_output_first(cli, phantom_archive, tmp_path):
    image, mask = phantom_archive / "images" / "ph000000.png", phantom_archive / "masks" / "ph000000.png"
    small = _image(tmp_path / "small.png", np.asarray(Image.open(mask))[:32, :48])
    _one_line_error(cli("sketch", image, "--mask", small, "--out", tmp_path / "a.png"),
                    "mask", code=2)
    _one_line_error(cli("sketch", image, "--mask", mask, "--out", tmp_path / "x.txt"),
                    "cannot tell the image format", code=2)
    folder = tmp_path / "outdir"
    folder.mkdir()
    _one_line_error(cli("sketch", image, "--mask", mask, "--out", folder), "is a folder", code=2)
    assert not (tmp_path / "x.txt").exists() and list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    _one_line_error(cli("sketch", loop, "--out", tmp_path / "b.png"), "Too many levels", code=2)
    _one_line_error(cli("sketch", tmp_path, "--out", tmp_path / "b.png"), "is a folder", code=2)
    ok = cli("sketch", image, "--mask", mask, "--out", tmp_path / "s.jpg")
    assert ok.code == 0 and Image.open(tmp_path / "s.jpg").format == "JPEG"


def test_bundle_without_refiner_is_said_not_silent(cli, setup, tmp_path):
    bundle = Path(shutil.copytree(setup.models, tmp_path / "noref"))
    cli("models", "manifest", bundle)  # a manifest that still records the refiner
    (bundle / "refiner.pt").unlink()
    shown = cli("models", "show", bundle)
    assert "refiner               missing" in shown.stdout and "stale manifest: refiner" in shown.stdout
    shown = json.loads(cli("models", "show", bundle, "--json").stdout)
    assert "refiner" in shown["missing"] and "refiner" not in shown["networks"]
    sketch = _image(tmp_path / "s.png", SKETCH)
    home = setup.private_home(tmp_path / "home")
    query = ["retrieve", sketch, "--home", home, "--model", bundle, "--k", "2", "--perceptual", "random"]
    default = cli(*query)
    assert default.code == 0 and "T=0" in default.stdout
    assert default.stderr.strip() == (f"note: no refiner H ({bundle / 'refiner.pt'} is missing): sketch queries "
                                      "run E alone (T=0); pass --steps 0 to ask for that")
    _one_line_error(cli(*query, "--steps", "2"), f"--steps 2 needs the refiner H, but {bundle / 'refiner.pt'} "
                                                   "is missing", code=2)
    asked = cli(*query, "--steps", "0")
    assert asked.code == 0 and asked.stderr == ""
    import s2m_retrieval as s2m

    with s2m.open_index(home=home, models=bundle) as index:  # the Python API names its parameter, not the flag
        with pytest.raises(BadInputError, match=r"^steps 2 needs the refiner H, .* query with steps=0 \(E alone\)$"):
            index.query(SKETCH, steps=2)


def test_query_limits_are_one_set_for_cli_and_http(cli, tmp_path):
    from s2m_retrieval.query.options import MAX_CANDIDATES, MAX_K, MAX_STEPS
    from s2m_retrieval.service.app import ServiceLimits

    limits = ServiceLimits()
    assert (limits.max_k, limits.max_candidates, limits.max_steps) == (MAX_K, MAX_CANDIDATES, MAX_STEPS)
    with pytest.raises(BadInputError, match="may only lower"):
        ServiceLimits(max_k=MAX_K + 1)
    sketch = _image(tmp_path / "s.png", SKETCH)
    home = tmp_path / "nohome"  # refused before any index is opened
    _one_line_error(cli("retrieve", sketch, "--home", home, "--k", MAX_K + 1), f"at most {MAX_K}", code=2)
    _one_line_error(cli("retrieve", sketch, "--home", home, "--candidates", MAX_CANDIDATES + 1), "at most", code=2)
    _one_line_error(cli("retrieve", sketch, "--home", home, "--steps", MAX_STEPS + 1),
                    f"between 0 and {MAX_STEPS}", code=2)
    _one_line_error(cli("generate", sketch, "--out", tmp_path / "g.png", "--steps", 10**6),
                    f"between 0 and {MAX_STEPS}", code=2)


def test_index_killed_before_faiss_is_incomplete_not_empty(cli, setup, tmp_path):
    from index.layout import index_paths
    from index.store import VectorStore
    from index.stamp import read_stamp

    home = setup.private_home(tmp_path / "home")
    paths = index_paths(home, "default")
    stamp = read_stamp(paths.manifest)
    VectorStore.create(stamp.dim, stamp.factory).save(paths.faiss_file)  # as a build killed before its first save
    sketch = _image(tmp_path / "s.png", SKETCH)
    line = _one_line_error(cli("retrieve", sketch, "--home", home, "--model", setup.models, "--perceptual",
                               "random"), "index 'default' is incomplete: 24 images are recorded but its FAISS file "
                                          "holds 0")
    assert f"`s2m index build {setup.archive} --name default` (it resumes)" in line


def test_killed_build_is_shown_interrupted(setup, tmp_path):
    from s2m_retrieval.ingest.report import index_info
    from s2m_retrieval.storage import catalog
    from s2m_retrieval.storage import open_database

    home = setup.private_home(tmp_path / "home")
    db = open_database(home)
    with db.session(write=True) as s:  # what a build killed by -9 leaves: its row still says running
        catalog.start_build(s, "default", 1, "Flat", str(setup.archive))
    db.dispose()
    assert index_info(home=home)["builds"][0]["status"] == "interrupted"


def test_corrupt_sqlite_is_one_line_and_left_alone(cli, setup, tmp_path):
    home = setup.private_home(tmp_path / "home")
    db = home / "s2m.db"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    os.truncate(db, 8192)
    before = db.read_bytes()
    sketch = _image(tmp_path / "s.png", SKETCH)
    for args in (["index", "info"], ["index", "verify"], ["index", "remove", "3"],
                 ["retrieve", sketch, "--model", setup.models, "--perceptual", "random"]):
        _one_line_error(cli(*args, "--home", home), f"the SQLite database {db} is damaged", code=1)
    assert db.read_bytes() == before


def test_ids_beyond_64_bits_name_no_image(cli, setup, tmp_path):
    from fastapi.testclient import TestClient

    from s2m_retrieval.query.engine import RetrievalEngine
    from s2m_retrieval.service.app import create_app
    from s2m_retrieval.storage.catalog import as_image_id

    huge = str(2**70)
    assert as_image_id(huge) is None and as_image_id(" 12") == 12 and as_image_id("١٢") is None
    home = setup.private_home(tmp_path / "home")
    _one_line_error(cli("retrieve", "--like", huge, "--home", home, "--model", setup.models), "no image with that id",
                    code=2)
    _one_line_error(cli("index", "remove", huge, "--home", home), f"none of {huge} is in index", code=2)
    assert cli("index", "verify", "--home", home).code == 0
    with RetrievalEngine.open("default", home=home, models=setup.models) as engine, \
            TestClient(create_app(engine)) as client:
        for response in (client.get(f"/v1/images/{huge}"), client.get(f"/v1/images/{huge}/meta"),
                         client.get("/v1/images/-1/meta"), client.post("/v1/retrieve", json={"like": int(huge)})):
            assert 400 <= response.status_code < 500, (response.status_code, response.text)
            assert isinstance(response.json()["detail"], str)


def _manifest(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_manifests_and_labels_are_read_by_one_reader(tmp_path, phantom_archive):
    from s2m_retrieval.errors import ArchiveError
    from s2m_retrieval.evaluation.manifest import read_manifest

    _image(tmp_path / "s.png", SKETCH)
    bom = _manifest(tmp_path / "bom.csv", "\ufeffsketch,target_id,grade\ns.png,ph000001,2\n")
    assert [(q.sketch.name, q.target_id, q.labels) for q in read_manifest(bom)] == [("s.png", "ph000001",
                                                                                      {"grade": 2})]
    bad = {"more fields": ("sketch,target_id\ns.png,ph000001,extra\n", "line 2: 3 fields, the header has 2"),
           "latin-1": ("sketch,target_id,note\ns.png,x,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
           "folder": (f"sketch,target_id\n{tmp_path},x\n", "line 2: " + f"{tmp_path} is a folder")}
    for name, (text, needle) in bad.items():
        with pytest.raises(BadInputError, match=needle):
            read_manifest(_manifest(tmp_path / f"{name}.csv", text))
    archive = Path(shutil.copytree(phantom_archive, tmp_path / "archive"))
    labels = archive / "labels.csv"
    _manifest(labels, b"\xef\xbb\xbf" + labels.read_bytes())
    assert scan_archive(archive)[0].labels["tonsil_grade"] is not None  # Excel's BOM is accepted
    _manifest(labels, labels.read_text(encoding="utf-8-sig") + "ph999,1,2,3,4,5,6,7,8,9,10,11,12\n")
    with pytest.raises(ArchiveError, match="fields, the header has"):
        scan_archive(archive)


def test_eval_cli_on_bad_manifests_is_one_line(cli, setup, tmp_path):
    _image(tmp_path / "s.png", SKETCH)
    for name, text, needle in (("extra", "sketch,target_id\ns.png,ph000001,extra\n", "line 2: 3 fields"),
                               ("latin1", "sketch,target_id\ns.png,caf\xe9\n".encode("latin-1"), "not UTF-8")):
        manifest = _manifest(tmp_path / f"{name}.csv", text)
        _one_line_error(cli("eval", manifest, "--out", tmp_path / f"r-{name}", "--home", setup.home, "--model",
                            setup.models), needle, code=2)


def test_index_add_rejections(cli, setup, tmp_path):
    home = setup.private_home(tmp_path / "home")
    empty, text = tmp_path / "empty.png", tmp_path / "text.png"
    empty.write_bytes(b"")
    text.write_text("not an image")
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    add = ["index", "add", "--home", home, "--encoder", setup.encoder_spec]
    result = cli(*add, empty, text, _gif(tmp_path / "g.gif"))
    _one_line_error(result, "none of the 3 files given was added", code=2)
    assert "bad 3" in result.stdout
    _one_line_error(cli(*add, loop), "Too many levels of symbolic links", code=2)
    _one_line_error(cli(*add, tmp_path), "is a folder; give the image file itself", code=2)
    assert cli("index", "verify", "--home", home).code == 0


def test_index_add_refuses_an_unknown_index_name(cli, setup, tmp_path):
    home = setup.private_home(tmp_path / "home")
    image = sorted((setup.archive / "images").glob("*.png"))[0]
    add = ["index", "add", image, "--encoder", setup.encoder_spec, "--name", "defualt"]
    line = _one_line_error(cli(*add, "--home", home), "no index named 'defualt'")
    assert "existing: default" in line and "`s2m index build ARCHIVE --name defualt`" in line
    _one_line_error(cli(*add, "--home", tmp_path / "fresh"), "none exist yet")
    assert not (home / "indexes" / "defualt").exists() and not (tmp_path / "fresh" / "indexes").exists()


def test_make_queries_skips_bad_images(tmp_path, phantom_archive):
    from s2m_retrieval.errors import ArchiveError
    from s2m_retrieval.evaluation.manifest import make_queries, read_manifest

    archive = Path(shutil.copytree(phantom_archive, tmp_path / "archive"))
    reference = read_manifest(make_queries(phantom_archive, tmp_path / "ref", n=5, seed=3))
    target = reference[0].target_id
    (archive / "masks" / f"{target}.png").write_bytes(b"broken")
    stats = ReadStats()
    queries = read_manifest(make_queries(archive, tmp_path / "q", n=5, seed=3, stats=stats))
    assert len(queries) == 5 and target not in {q.target_id for q in queries}
    assert [q.target_id for q in queries[:4]] == [q.target_id for q in reference[1:]]  # the others are kept
    assert stats.n_bad == 1 and stats.bad_files[0][0].endswith(f"{target}.png")
    with pytest.raises(ArchiveError, match="too few readable images for --n 24"):
        make_queries(archive, tmp_path / "all", n=24, seed=3)
    assert not (tmp_path / "all" / "manifest.csv").exists() and not list((tmp_path / "all" / "sketches").iterdir())


def test_verify_gives_its_hint_once(setup, tmp_path):
    from index.layout import index_paths
    from s2m_retrieval.ingest.report import verify_index

    home = setup.private_home(tmp_path / "home")
    shard = sorted(index_paths(home, "default").shards.glob("*.vectors.npy"))[0]
    shard.write_bytes(b"xx")
    problems = verify_index(home=home).problems
    assert len(problems) == 1 and problems[0].count("--rebuild") == 1, problems


def test_demo_reruns_in_its_folder_but_never_over_a_users(cli, setup, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--n", "30", "--model", setup.models, "--perceptual", "random"]
    assert cli(*args).code == 0
    again = cli(*args)
    assert again.code == 0 and "reusing the 30 phantoms" in again.stdout and "index 'demo': 30 images" in again.stdout
    other = cli(*args[:4], "24", *args[5:])
    assert other.code == 0 and "index 'demo': 24 images" in other.stdout
    assert len(list((out / "archive" / "images").glob("*.png"))) == 24
    users = tmp_path / "mine"
    (users / "archive").mkdir(parents=True)
    (users / "archive" / "keep.png").write_bytes(b"x")
    _one_line_error(cli("demo", "--out", users, "--n", "30"), "was not made by s2m demo", code=1)
    assert (users / "archive" / "keep.png").read_bytes() == b"x"


def test_negative_workers_are_a_usage_error(cli, tmp_path):
    _one_line_error(cli("data", "phantom", "--n", 2, "--workers", -1, "--out", tmp_path / "ph"),
                    "Invalid value for '--workers'", code=2)
    assert not any(tmp_path.iterdir())


def test_negative_seeds_and_too_small_sets_are_one_line(cli, phantom_archive, tmp_path):
    # numpy's generators refuse negative seeds with a bare ValueError; the options say it first, before any write.
    image = phantom_archive / "images" / "ph000000.png"
    cases = [(("data", "phantom", "--n", 2, "--seed", -1, "--out", tmp_path / "ph"), "--seed"),
             (("eval", "make-queries", phantom_archive, "--n", 2, "--seed", -1, "--out", tmp_path / "q"), "--seed"),
             (("eval", "sketch2medi", "--n", 2, "--seed", -1), "--seed"),
             (("eval", "sketch2medi", "--n", 2, "--start", -1), "--start"),
             (("eval", "generation", phantom_archive, "--n", 1), "--n"),
             (("sketch", image, "--freehand", "--seed", -1, "--out", tmp_path / "s.png"), "--seed"),
             (("demo", "--seed", -1, "--out", tmp_path / "demo"), "--seed")]
    for args, needle in cases:
        _one_line_error(cli(*args), needle, code=2)
    assert not any(tmp_path.iterdir())


def test_the_api_refuses_negative_seeds_before_writing(tmp_path, phantom_archive):
    import s2m_retrieval as s2m
    from s2m_retrieval.errors import BadInputError

    with pytest.raises(BadInputError, match="seed"):
        s2m.make_phantoms(tmp_path / "ph", 2, seed=-1)
    assert not (tmp_path / "ph").exists()
    image = phantom_archive / "images" / "ph000000.png"
    mask = phantom_archive / "masks" / "ph000000.png"
    with pytest.raises(BadInputError, match="seed"):
        s2m.draw_sketch(image, mask=mask, freehand=True, seed=-1)


def test_a_checkpoint_of_another_kind_names_it_with_its_article(tmp_path):
    from s2m_retrieval.errors import CheckpointError
    from s2m_retrieval.networks.checkpoint import load_checkpoint, read_payload, save_checkpoint

    path = save_checkpoint(tmp_path / "inv.pt", kind="inverter", config={}, state_dict={})
    with pytest.raises(CheckpointError, match=r"holds an 'inverter', expected a 'generator'$"):
        load_checkpoint(path, kind="generator")
    for kind, said in (("encoder", "an 'encoder'"), ("unit", "a 'unit'"), ("segmenter", "a 'segmenter'")):
        with pytest.raises(CheckpointError, match=f"^checkpoint holds {said}, expected a 'refiner'$"):
            read_payload({"kind": kind}, "refiner")
