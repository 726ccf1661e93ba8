"""Archive reader: formats, orientation, modes, bad files counted and skipped, batching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from s2m_retrieval.data.archive import (ReadStats, fit_square, iter_batches, load_archive_arrays, read_image,
                                        scan_archive)
from s2m_retrieval.errors import ArchiveError, BadImageError


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tif", "webp"])
def test_formats_decode_to_rgb(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    Image.fromarray(_rgb()).save(path)
    arr = read_image(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_rgb(10, 40))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert read_image(path).shape == (40, 10, 3)


def test_modes_become_rgb(tmp_path):
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    arr = read_image(tmp_path / "g.png")
    assert arr.shape == (10, 20, 3) and np.array_equal(arr[..., 0], grey)

    deep = (np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)
    Image.fromarray(deep).save(tmp_path / "d.png")
    arr16 = read_image(tmp_path / "d.png")
    assert arr16.shape == (10, 20, 3)
    assert arr16[0, 0, 0] == 0 and arr16[-1, -1, 0] == round(199 * 300 / 65535 * 255)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    arr_a = read_image(tmp_path / "a.png")
    assert arr_a[0, 0, 0] == 200 and arr_a[1, 1, 0] == 0


def _bad_files(root):
    Image.fromarray(_rgb()).save(root / "good.png")
    full = root / "good.png"
    (root / "truncated.png").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    (root / "text.jpg").write_text("this is not an image")
    (root / "empty.png").write_bytes(b"")
    Image.new("L", (3000, 3000)).save(root / "huge.png")


def test_bad_files_each_raise(tmp_path):
    _bad_files(tmp_path)
    for name in ("truncated.png", "text.jpg", "empty.png"):
        with pytest.raises(BadImageError):
            read_image(tmp_path / name)
    with pytest.raises(BadImageError, match="pixel limit"):
        read_image(tmp_path / "huge.png", max_pixels=1_000_000)


def test_bad_files_are_skipped_and_counted(tmp_path):
    _bad_files(tmp_path)
    stats = ReadStats()
    batches = list(iter_batches(scan_archive(tmp_path), 4, 16, max_pixels=1_000_000, stats=stats))
    assert [e.stem for b in batches for e in b.entries] == ["good"]
    assert stats.read == 1 and stats.n_bad == 4
    assert {p.split("/")[-1] for p, _ in stats.bad_files} == {"truncated.png", "text.jpg", "empty.png", "huge.png"}


def test_scan_joins_masks_and_labels_recursively(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "sub" / "x1.png")
    Image.fromarray(_rgb()).save(tmp_path / "sub" / "deeper" / "x2.jpeg")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / "x1.png")
    (tmp_path / "labels.csv").write_text("file,grade,site\nsub/x1.png,3,left\nx2.jpeg,1.5,right\n")
    entries = scan_archive(tmp_path)
    assert [e.stem for e in entries] == ["x2", "x1"]  # sorted by relative path
    by = {e.stem: e for e in entries}
    assert by["x1"].mask_path is not None and by["x2"].mask_path is None
    assert by["x1"].labels == {"grade": 3, "site": "left"} and by["x2"].labels["grade"] == 1.5


def test_labels_csv_needs_key_column(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("name,grade\na,1\n")
    with pytest.raises(ArchiveError, match="'id' or 'file'"):
        scan_archive(tmp_path)


def test_missing_folder_and_empty_archive(tmp_path):
    with pytest.raises(ArchiveError):
        scan_archive(tmp_path / "nope")
    with pytest.raises(ArchiveError, match="no images"):
        load_archive_arrays(tmp_path, 16)


def test_streaming_batches_and_masks(phantom_archive):
    stats = ReadStats()
    batches = list(iter_batches(scan_archive(phantom_archive), 10, 32, with_masks=True, stats=stats))
    assert [len(b.entries) for b in batches] == [10, 10, 4]
    assert batches[0].images.shape == (10, 32, 32, 3) and batches[0].masks.shape == (10, 32, 32)
    assert stats.read == 24 and stats.n_bad == 0


def test_fit_square_policies():
    img = _rgb(20, 40)
    assert fit_square(img, 20, "crop").shape == (20, 20, 3)
    padded = fit_square(img, 40, "pad")
    assert padded.shape == (40, 40, 3) and padded[0].sum() == 0 and np.array_equal(padded[10:30], img)
