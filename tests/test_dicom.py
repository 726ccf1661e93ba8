"""DICOM archives: pixels as RGB, tags that identify patients never stored without --keep-tags, clear errors."""

from __future__ import annotations

import json
import sqlite3
import zlib

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, VLPhotographicImageStorage

from cli.main import app
from s2m_retrieval.data.archive import ReadStats, iter_batches, read_image, read_image_size, scan_archive
from s2m_retrieval.errors import BadImageError

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-448812", "PatientBirthDate": "19700101",
           "StudyDate": "20240301", "InstitutionName": "Saint Example Hospital", "AccessionNumber": "ACC991"}


def write_dicom(path, pixels: np.ndarray, photometric: str, *, frames: int = 1, sop=VLPhotographicImageStorage,
                with_pixels: bool = True, **tags) -> None:
    """A Part 10 file made the way a camera or a secondary-capture export would: uncompressed, one SOP instance."""
    uid = f"1.2.826.0.1.3680043.8.498.{zlib.crc32(str(path).encode())}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, uid
    ds.Modality = "XC"
    for key, value in tags.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.Rows, ds.Columns = (pixels.shape[1:] if frames > 1 else pixels.shape)[:2]
        ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL") else 1
        ds.PhotometricInterpretation = photometric
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def dicom_archive(tmp_path):
    """An archive of DICOM files beside a PNG: a colour photograph with patient tags, a 16-bit grey image with a
    window, an extension-less export, a multi-frame file and a structured report without pixels."""
    from PIL import Image

    root = tmp_path / "dicom_archive"
    root.mkdir()
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    write_dicom(root / "photo.dcm", colour, "RGB", **PATIENT, BodyPartExamined="THROAT")
    grey = (np.arange(48 * 32, dtype=np.uint16).reshape(48, 32) * 20)
    write_dicom(root / "grey.dcm", grey, "MONOCHROME2", sop=SecondaryCaptureImageStorage,
                WindowCenter=10000, WindowWidth=20000, PatientName="Roe^Richard")
    write_dicom(root / "IM000017", colour[::-1].copy(), "RGB", PatientID="MRN-1")
    write_dicom(root / "cine.dcm", np.stack([colour] * 3), "RGB", frames=3)
    write_dicom(root / "report.dcm", colour, "RGB", with_pixels=False, sop="1.2.840.10008.5.1.4.1.1.88.11")
    Image.fromarray(colour).save(root / "plain.png")
    (root / "notes").write_text("not an image, no extension")
    return root, colour, grey


def test_dicom_pixels_come_back_as_rgb(dicom_archive):
    root, colour, grey = dicom_archive
    assert np.array_equal(read_image(root / "photo.dcm"), colour)
    assert read_image_size(root / "photo.dcm") == (40, 56)
    out = read_image(root / "grey.dcm")
    assert out.shape == (48, 32, 3) and (out[..., 0] == out[..., 2]).all()
    expected = np.clip(grey.astype(float) / 20000, 0, 1) * 255 + 0.5  # window 0..20000
    assert np.abs(out[..., 0].astype(int) - expected.astype(np.uint8).astype(int)).max() <= 1
    assert np.array_equal(read_image(root / "IM000017"), colour[::-1])


def test_dicom_without_an_image_or_frame_is_a_clear_error(dicom_archive):
    root, colour, _ = dicom_archive
    assert np.array_equal(read_image(root / "cine.dcm"), colour)  # a multi-frame file reads as its first frame
    with pytest.raises(BadImageError, match="frame 3 asked for, the DICOM file holds 3 frames"):
        read_image(root / "cine.dcm", frame=3)
    with pytest.raises(BadImageError, match="without pixel data.*not an image"):
        read_image(root / "report.dcm")


def test_scan_and_labels_keep_patient_tags_out_unless_asked(dicom_archive):
    root, _, _ = dicom_archive
    entries = scan_archive(root)
    assert [e.rel for e in entries] == ["IM000017", "cine.dcm", "grey.dcm", "photo.dcm", "plain.png", "report.dcm"]
    stats = ReadStats()
    kept = [e for b in iter_batches(entries, 8, 32, stats=stats) for e in b.entries]
    assert {e.rel for e in kept} == {"IM000017", "cine.dcm", "grey.dcm", "photo.dcm", "plain.png"}
    assert stats.n_bad == 1 and "without pixel data" in stats.bad_files[0][1]
    assert next(e for e in kept if e.rel == "cine.dcm").labels["frame"] == 0
    assert "frame" not in next(e for e in kept if e.rel == "photo.dcm").labels
    photo = next(e for e in kept if e.rel == "photo.dcm")
    assert photo.labels["Modality"] == "XC" and photo.labels["BodyPartExamined"] == "THROAT"
    assert photo.labels["SOPClassUID"] == "VL Photographic Image Storage"
    assert not set(PATIENT) & set(photo.labels)
    with_tags = [e for b in iter_batches(entries, 8, 32, keep_tags=True) for e in b.entries]
    photo = next(e for e in with_tags if e.rel == "photo.dcm")
    assert {k: photo.labels[k] for k in PATIENT} == PATIENT


def _db_rows(home):
    con = sqlite3.connect(home / "s2m.db")
    try:
        return {path.rsplit("/", 1)[-1]: json.loads(labels) for path, labels in
                con.execute("select path, labels from images")}
    finally:
        con.close()


def test_index_build_never_stores_patient_tags_without_keep_tags(dicom_archive, runner, tmp_path):
    root, _, _ = dicom_archive
    home = tmp_path / "home"
    result = runner.invoke(app, ["index", "build", str(root), "--home", str(home), "--encoder", "fake:dim=8"])
    assert result.exit_code == 0, result.output
    assert "bad 1" in result.stdout and "report.dcm: DICOM without pixel data" in result.stdout
    rows = _db_rows(home)
    assert set(rows) == {"IM000017", "cine.dcm#frame=0", "grey.dcm", "photo.dcm", "plain.png"}
    assert rows["photo.dcm"]["Modality"] == "XC" and not set(PATIENT) & set(rows["photo.dcm"])
    raw = (home / "s2m.db").read_bytes()
    assert b"Doe^Jane" not in raw and b"MRN-448812" not in raw and b"Roe^Richard" not in raw

    keep = tmp_path / "home_keep"
    result = runner.invoke(app, ["index", "build", str(root), "--home", str(keep), "--encoder", "fake:dim=8",
                                 "--keep-tags"])
    assert result.exit_code == 0, result.output
    rows = _db_rows(keep)
    assert rows["photo.dcm"]["PatientName"] == "Doe^Jane" and rows["IM000017"]["PatientID"] == "MRN-1"


def test_camera_jpeg_inside_dicom_decodes_to_rgb(tmp_path):
    """A visible-light photograph stored as baseline JPEG (YBR_FULL_422), the way cameras' DICOM exports do."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    image = np.zeros((40, 56, 3), np.uint8)
    image[:20], image[20:] = (200, 30, 40), (20, 180, 60)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = VLPhotographicImageStorage, "1.2.826.0.1.9"
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = VLPhotographicImageStorage, "1.2.826.0.1.9", "XC"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 40, 56, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "camera.dcm", enforce_file_format=True)
    out = read_image(tmp_path / "camera.dcm")
    assert out.shape == (40, 56, 3)
    # away from the colour edge (JPEG subsamples chroma), the colours come back as RGB, not YCbCr
    assert np.abs(out[2:16].astype(int) - image[2:16]).max() <= 6
    assert np.abs(out[24:].astype(int) - image[24:]).max() <= 6


# pydicom's own test files that no decoder reads, each for a reason in the file itself: a misplaced JPEG marker,
# a JPEG 2000 header with an impossible tile count, pixel data cut short, no transfer syntax, no BitsAllocated.
BROKEN = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm",
          "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"}


def test_pydicoms_own_test_files_are_indexed_or_counted_with_a_reason(tmp_path):
    """Files written by DCMTK, GDCM and others: every one is indexed or skipped with its reason; compressed
    pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) decodes with the dicom extra's decoders."""
    import shutil
    from pathlib import Path

    import pydicom

    from s2m_retrieval.testing.fake_encoder import FakeEncoder
    from s2m_retrieval.ingest.runner import build_index

    src = Path(pydicom.__path__[0]) / "data" / "test_files"
    files = sorted(src.rglob("*.dcm"))
    root = tmp_path / "archive"
    for f in files:
        (root / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.relative_to(src))
    with pytest.warns(UserWarning):  # pydicom warns about the malformed values some files hold on purpose
        summary = build_index(root, FakeEncoder(), home=tmp_path / "home")
    bad = {Path(p).name: reason for p, reason in summary.bad}
    assert summary.added + len(summary.bad) == len(files) > 70 and summary.total == summary.added
    assert {n for n, r in bad.items() if "cannot be decoded" in r} <= BROKEN
    assert "DICOM tag NumberOfFrames is malformed" in bad["badVR.dcm"]

    def syntax(f):
        meta = pydicom.dcmread(f, stop_before_pixels=True, force=True).get("file_meta")
        return getattr(meta, "TransferSyntaxUID", None)
    compressed = [f.name for f in files if f.name not in BROKEN and syntax(f) is not None and syntax(f).is_compressed]
    decoded = [n for n in compressed if n not in bad]
    assert len(decoded) >= 15 and not [n for n in compressed if "cannot be decoded" in bad.get(n, "")]
