"""Phantom archive: determinism, label consistency, anatomy follows the labels."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from s2m_retrieval.data.classes import FOLLICLES, NUM_CLASSES, TONGUE, TONSILS, UVULA
from s2m_retrieval.data.phantom import make_phantom, sample_params, render
from s2m_retrieval.data.phantom_archive import write_phantom_archive
from s2m_retrieval.errors import ArchiveError, BadInputError


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_is_byte_identical(tmp_path):
    a = write_phantom_archive(tmp_path / "a", n=6, size=64, seed=3)
    b = write_phantom_archive(tmp_path / "b", n=6, size=64, seed=3)
    c = write_phantom_archive(tmp_path / "c", n=6, size=64, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_workers_do_not_change_bytes(tmp_path):
    a = write_phantom_archive(tmp_path / "a", n=120, size=64, seed=2, workers=1)
    b = write_phantom_archive(tmp_path / "b", n=120, size=64, seed=2, workers=2)
    assert _digest(a) == _digest(b)


def _ids(folder):
    return [row["id"] for row in csv.DictReader((folder / "labels.csv").open())]


def test_extend_merges_labels_and_overwrite_replaces(tmp_path):
    out = write_phantom_archive(tmp_path / "a", n=4, size=64, seed=1)
    write_phantom_archive(out, n=3, size=64, seed=1, start=4, extend=True)
    assert _ids(out) == [f"ph{i:06d}" for i in range(7)]
    assert len(list((out / "images").glob("*.png"))) == 7
    assert _digest(out) == _digest(write_phantom_archive(tmp_path / "b", n=7, size=64, seed=1))
    with pytest.raises(ArchiveError, match="same --seed"):
        write_phantom_archive(out, n=2, size=64, seed=2, start=7, extend=True)
    write_phantom_archive(out, n=2, size=64, seed=5, overwrite=True)
    assert _ids(out) == ["ph000000", "ph000001"] and len(list((out / "masks").glob("*.png"))) == 2


def test_overwrite_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ArchiveError, match="not a phantom archive"):
        write_phantom_archive(tmp_path / "mine", n=2, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "mine" / "images").exists()


def test_archive_layout_matches_contract(phantom_archive):
    images = sorted((phantom_archive / "images").glob("*.png"))
    masks = sorted((phantom_archive / "masks").glob("*.png"))
    assert len(images) == len(masks) == 24
    assert [p.stem for p in images] == [p.stem for p in masks]
    rows = list(csv.DictReader((phantom_archive / "labels.csv").open()))
    assert [r["id"] for r in rows] == [p.stem for p in images]
    for r in rows:
        assert 0 <= int(r["tonsil_grade"]) <= 4
        assert 1 <= int(r["mallampati"]) <= 4
        assert r["follicles"] in ("0", "1")
    classes = json.loads((phantom_archive / "classes.json").read_text())["classes"]
    assert sorted(int(k) for k in classes) == list(range(NUM_CLASSES))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_sizes_and_mask_values(size):
    image, mask, _ = make_phantom(1, 0, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.max() < NUM_CLASSES


def test_prefix_of_larger_archive_is_identical():
    """Phantom i does not depend on how many phantoms are generated."""
    a = make_phantom(5, 3, 64)
    b = make_phantom(5, 3, 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _area(mask, label):
    return int((mask == label).sum())


def _params_with(seed, **changes):
    from dataclasses import replace

    return replace(sample_params(np.random.default_rng(seed)), **changes)


def test_tonsil_area_grows_with_grade():
    for seed in range(5):
        areas = [_area(render(_params_with(seed, tonsil_grade=g, mallampati=1, tongue_height=0.56), 128)[1],
                       TONSILS) for g in range(5)]
        assert areas[0] == 0
        assert all(a < b for a, b in zip(areas[1:], areas[2:])), areas


def test_tongue_rises_with_mallampati():
    for seed in range(5):
        areas = [_area(render(_params_with(seed, mallampati=m, tongue_height={1: 0.56, 2: 0.4, 3: 0.2, 4: 0.02}[m]),
                              128)[1], TONGUE) for m in (1, 2, 3, 4)]
        assert all(a < b for a, b in zip(areas, areas[1:])), areas


def test_follicles_only_when_labelled():
    found = {0: 0, 1: 0}
    for i in range(60):
        _, mask, p = make_phantom(11, i, 64)
        found[p.follicles] += int(_area(mask, FOLLICLES) > 0)
        assert p.follicles == 1 or _area(mask, FOLLICLES) == 0
    assert found[1] > 0


def test_uvula_visible_with_low_tongue():
    for i in range(20):
        _, mask, p = make_phantom(2, i, 64)
        if p.mallampati == 1:
            assert _area(mask, UVULA) > 0


def test_images_vary():
    imgs = np.stack([make_phantom(0, i, 64)[0] for i in range(8)]).astype(float)
    assert imgs.std(axis=0).mean() > 10


def test_bad_arguments(tmp_path):
    with pytest.raises(BadInputError):
        write_phantom_archive(tmp_path / "x", n=2, size=65)
    with pytest.raises(BadInputError):
        write_phantom_archive(tmp_path / "x", n=0)
    with pytest.raises(BadInputError):
        write_phantom_archive(tmp_path / "x", n=2, start=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(ArchiveError):
        write_phantom_archive(tmp_path / "full", n=2)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
