"""The Python API: the README's example as written, and every public name on tiny random models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import PERCEPTUAL, labels_csv, phantom_sketch

import s2m_retrieval as s2m
from s2m_retrieval.query.engine import RetrievalEngine

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python API\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("S2M_DB_URL", raising=False)
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    assert "encoded 24/24" in out and "24 images indexed, 0 unchanged" in out
    ranks = [line.split()[0] for line in out if re.match(r"\d ph\d{6} score", line)]
    assert ranks == ["1", "2", "3", "4", "5"]
    assert (tmp_path / "s2m-home" / "indexes" / "throats" / "index.faiss").is_file()


def test_all_lists_the_documented_api():
    assert sorted(s2m.__all__) == ["BuildReport", "Bundle", "Hit", "Index", "S2MError", "add_images", "build_index",
                                   "draw_sketch", "generate", "load_bundle", "make_phantoms", "open_index",
                                   "remove_images"]
    for name in s2m.__all__:
        assert getattr(s2m, name).__doc__, name
        assert f"`{name}" in readme_example() or f"`{name}" in README.read_text(), name


def test_import_loads_no_heavy_module():
    code = "import sys, s2m_retrieval; print(sorted(m for m in ('torch', 'numpy', 'faiss', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def index(setup):
    with s2m.open_index(home=setup.home, models=setup.models) as opened:
        yield opened


def test_query_returns_typed_hits_like_the_engine(index, setup):
    sketch = phantom_sketch()
    hits = index.query(sketch, k=5, alpha=0.5)
    with RetrievalEngine.open(home=setup.home, models=setup.models) as engine:
        expected = engine.query_sketch(sketch, k=5, alpha=0.5).hits
        default = engine.query_sketch(sketch, k=5).hits
    assert [h.id for h in index.query(sketch, k=5)] == [h.id for h in default]   # one default, alpha 1
    assert all(h.perceptual_distance is None for h in default)
    assert [h.id for h in hits] == [h.id for h in expected] and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    labels = labels_csv(setup.archive)
    for hit, want in zip(hits, expected):
        assert isinstance(hit, s2m.Hit) and hit.score == want.score and hit.path == want.path
        assert hit.archive_id == Path(hit.path).stem and str(hit.labels["tonsil_grade"]) == \
            labels[hit.archive_id]["tonsil_grade"]
        assert hit.latent_distance >= 0 and hit.perceptual_distance is not None
    assert all(a.score <= b.score for a, b in zip(hits, hits[1:]))
    assert len(index) == 24 and index.name == "default" and Path(index.models) == setup.models


def test_a_sketch_may_be_an_array_a_pil_image_or_a_file(index, tmp_path):
    sketch = phantom_sketch(index=3)
    Image.fromarray(sketch).save(tmp_path / "s.png")
    ids = [[h.id for h in index.query(s, k=4)] for s in
           (sketch, Image.fromarray(sketch), Image.fromarray(sketch).convert("RGBA"), tmp_path / "s.png",
            str(tmp_path / "s.png"))]
    assert all(i == ids[0] for i in ids)


def test_options_filters_like_and_generate(index, setup):
    sketch = phantom_sketch()
    graded = index.query(sketch, k=10, where="tonsil_grade>=3")
    assert graded and all(h.labels["tonsil_grade"] >= 3 for h in graded)
    latent_only = index.query(sketch, k=3, alpha=1.0, steps=0)
    assert all(h.perceptual_distance is None for h in latent_only)
    first = index.query(sketch, k=1)[0]
    for key in (first.id, first.path, first.archive_id):
        assert index.like(key, k=3)[0].id == first.id
    x_hat = index.generate(sketch)
    assert x_hat.shape == (32, 32, 3) and x_hat.dtype == np.uint8
    assert np.array_equal(x_hat, s2m.generate(sketch, models=setup.models))
    assert not np.array_equal(index.generate(sketch, steps=0), x_hat)


def test_bad_inputs_are_s2m_errors(index, setup, tmp_path):
    with pytest.raises(s2m.S2MError, match="empty"):
        index.query(np.full((64, 64), 255, np.uint8))
    with pytest.raises(s2m.S2MError, match="^k and candidates must be >= 1"):
        index.query(phantom_sketch(), k=0)
    with pytest.raises(s2m.S2MError, match="no image"):
        index.like("not-in-the-index")
    with pytest.raises(s2m.S2MError):
        s2m.open_index("missing", home=setup.home, models=setup.models)
    with pytest.raises(s2m.S2MError):
        index.query(tmp_path / "absent.png")


def test_messages_name_the_parameters_as_the_caller_wrote_them(index):
    sketch = phantom_sketch()
    for call, message in ((lambda: index.query(sketch, k=1, candidates=0), "k and candidates must be >= 1"),
                          (lambda: index.query(sketch, alpha=2.0), "alpha must be between 0 and 1"),
                          (lambda: index.like(0, max_distance=-1.0), "max_distance must be >= 0"),
                          (lambda: index.query(sketch, steps=99), "steps must be between 0 and 10"),
                          (lambda: index.generate(sketch, steps=-1), "steps must be between 0 and 10"),
                          (lambda: index.like("not-in-the-index"), "image 'not-in-the-index': no image with that"),
                          (lambda: index.query(sketch, where="tonsil_grade>>3"), "where 'tonsil_grade>>3': "),
                          (lambda: index.query(sketch, where="grade>1"), "where: unknown column 'grade'"),
                          (lambda: index.like(1, where="tonsil_grade=big"), "where tonsil_grade='big': column")):
        with pytest.raises(s2m.S2MError) as raised:
            call()
        assert str(raised.value).startswith(message) and "--" not in str(raised.value), str(raised.value)


def test_a_bundle_mismatch_names_the_models_parameter(setup, tmp_path):
    import shutil

    from s2m_retrieval.model.bundle import refresh_manifest

    home = setup.private_home(tmp_path / "home")
    refresh_manifest(shutil.copytree(setup.models, home / "models" / "alpha"))  # the bundle that built the index
    with pytest.raises(s2m.S2MError) as raised:
        s2m.open_index(home=home, models=setup.other_models)
    assert "; open it with models='alpha', or rebuild" in str(raised.value), str(raised.value)
    assert "--model alpha" not in str(raised.value)


def test_build_add_and_remove(tmp_path, setup):
    archive = s2m.make_phantoms(tmp_path / "archive", n=6, size=64, seed=3)
    extra = s2m.make_phantoms(tmp_path / "extra", n=8, size=64, seed=3) / "images" / "ph000007.png"
    calls = []
    options = dict(home=tmp_path / "home", models=setup.models, perceptual=PERCEPTUAL)
    report = s2m.build_index(archive, "mine", progress=lambda done, total: calls.append((done, total)), **options)
    assert (report.added, report.skipped, report.total, report.bad) == (6, 0, 6, ())
    assert calls[0] == (0, 6) and calls[-1] == (6, 6) and isinstance(report, s2m.BuildReport)
    again = s2m.build_index(archive, "mine", **options)
    assert (again.added, again.skipped, again.total) == (0, 6, 6)
    with s2m.open_index("mine", home=tmp_path / "home", models=s2m.load_bundle(setup.models)) as opened:
        assert len(opened) == 6 and not opened.refresh()
        added = s2m.add_images([extra], "mine", **options)
        assert (added.added, added.total) == (1, 7) and len(opened) == 6
        assert s2m.remove_images(["ph000000", 2], "mine", home=tmp_path / "home") == 2
        assert opened.refresh() and len(opened) == 5
        assert "ph000007" in {h.archive_id for h in opened.query(phantom_sketch(), k=5)}
    later = s2m.build_index(archive, "mine", **options)  # removed images stay out of later builds
    assert (later.added, later.excluded, later.total, later.missing) == (0, 2, 5, ())


def test_load_bundle_and_draw_sketch(setup, phantom_archive):
    shipped = s2m.load_bundle()
    assert shipped.name == "phantom" and shipped.missing == ("latent_discriminator",)
    assert {"generator", "encoder", "refiner", "inverter", "segmenter"} <= set(shipped.networks)
    assert shipped.manifest["format"] == "s2m-bundle/1" and isinstance(shipped.metrics, dict)
    tiny = s2m.load_bundle(setup.models)
    assert tiny.path == setup.models and tiny.manifest == {} and "segmenter" in tiny.missing
    image = phantom_archive / "images" / "ph000002.png"
    from_mask = s2m.draw_sketch(image, mask=phantom_archive / "masks" / "ph000002.png")
    from_segmenter = s2m.draw_sketch(np.asarray(Image.open(image).convert("RGB")))
    for drawing in (from_mask, from_segmenter):
        assert drawing.shape == (64, 64) and drawing.dtype == np.uint8 and drawing.min() < 128 < drawing.max()
    assert (from_mask != from_segmenter).mean() < 0.1  # the shipped segmenter finds the phantom's anatomy
    with pytest.raises(s2m.S2MError, match="one colour"):
        s2m.draw_sketch(np.zeros((64, 64, 3), np.uint8))
