"""DICOM archive files (photographs, secondary captures) as RGB pixels, and which of their tags may be stored."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from s2m_retrieval.errors import ArchiveError, BadImageError

DICOM_EXTENSIONS = (".dcm", ".dicom")
_MAGIC_OFFSET = 128  # Part 10 files: 128-byte preamble, then "DICM"

# Stored with every DICOM image: what kind of image it is, never who it shows or when and where it was taken.
DESCRIPTIVE_TAGS = ("Modality", "SOPClassUID", "PhotometricInterpretation", "Rows", "Columns", "BitsStored",
                    "BodyPartExamined", "ImageType", "ConversionType", "Manufacturer", "ManufacturerModelName")
# Identify a patient, a visit or a person: stored only with --keep-tags. Free-text descriptions are here too,
# since clinicians write names and dates into them.
IDENTIFYING_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientSex", "PatientAge",
                    "PatientWeight", "PatientAddress", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                    "SOPInstanceUID", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "ContentDate",
                    "AcquisitionDateTime", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
                    "PerformingPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
                    "StudyDescription", "SeriesDescription", "ImageComments")


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A .dcm/.dicom file, or an extension-less file with the DICOM Part 10 marker (how PACS exports name them)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if suffix or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ArchiveError("the archive holds DICOM files, reading them needs pydicom: "
                           "pip install 's2m-retrieval[dicom]'") from None
    return pydicom


def read_dicom(path: str | os.PathLike, max_pixels: int) -> tuple[np.ndarray, object]:
    """RGB uint8 `[H, W, 3]` of a single-image DICOM file, and its dataset (for the tags)."""
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for a damaged or non-DICOM file
        raise BadImageError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        kind = getattr(ds, "SOPClassUID", None)
        name = getattr(kind, "name", kind) or "unknown SOP class"
        raise BadImageError(f"{path}: DICOM without pixel data ({name}), not an image")
    frames, rows, cols = (_count(ds, tag, path, default) for tag, default in
                          (("NumberOfFrames", 1), ("Rows", 0), ("Columns", 0)))
    if frames != 1:
        raise BadImageError(f"{path}: DICOM holds {frames} frames, not a single 2D image; export each frame "
                            "as its own file")
    if rows * cols > max_pixels:
        raise BadImageError(f"{path}: {cols}x{rows} exceeds the pixel limit {max_pixels}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise BadImageError(f"{path}: DICOM pixel data cannot be decoded ({getattr(syntax, 'name', syntax)}; "
                            f"{str(exc)[:60]})") from exc
    return _to_rgb(pixels, ds, path), ds


def _count(ds, tag: str, path: Path, default: int) -> int:
    """An integer tag of the dataset; a malformed value (e.g. NumberOfFrames '1A') is a bad file, not a crash."""
    try:
        value = getattr(ds, tag, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise BadImageError(f"{path}: DICOM tag {tag} is malformed ({str(getattr(ds, tag, ''))[:20]!r})") from None
    except Exception as exc:  # pydicom parses a value lazily and may raise its own types
        raise BadImageError(f"{path}: DICOM tag {tag} cannot be read ({type(exc).__name__})") from None


def _to_rgb(pixels: np.ndarray, ds, path: Path) -> np.ndarray:
    """Decoded DICOM pixels -> RGB uint8: grey via its window (else its own range), colour scaled to 8 bits."""
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if samples == 1 and pixels.ndim == 2:
        grey = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) \
            + float(getattr(ds, "RescaleIntercept", 0) or 0)
        centre, width = _window(ds)
        if width is not None and width > 0:
            lo, hi = centre - width / 2, centre + width / 2
        else:
            lo, hi = float(grey.min()), float(grey.max())
        grey = np.clip((grey - lo) / max(hi - lo, 1e-9), 0, 1)
        if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            grey = 1 - grey
        out = (grey * 255 + 0.5).astype(np.uint8)
        return np.repeat(out[..., None], 3, axis=2)
    if samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:  # pydicom 3 returns YBR converted to RGB
        if pixels.dtype != np.uint8:
            top = float((1 << int(getattr(ds, "BitsStored", 8) or 8)) - 1)
            pixels = np.clip(pixels.astype(np.float64) / top * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels)
    raise BadImageError(f"{path}: DICOM pixels of shape {pixels.shape} ({samples} samples per pixel, "
                        f"{photometric or 'no photometric interpretation'}) are not a single 2D image")


def _window(ds) -> tuple[float, float | None]:
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is None or width is None:
        return 0.0, None
    first = (lambda v: v[0] if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else v)
    try:
        return float(first(centre)), float(first(width))
    except (TypeError, ValueError):
        return 0.0, None


_NUMERIC_VRS = {"IS": int, "US": int, "UL": int, "SS": int, "SL": int, "DS": float, "FL": float, "FD": float}


def _plain(element):
    """A data element's value as JSON-ready data: numbers by their VR (IDs and dates stay text, leading zeros
    and all), UIDs by their registered names, several values joined with backslashes as DICOM writes them."""
    value = element.value
    if value is None or element.VR == "SQ":
        return None
    many = type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple))
    if element.VR in _NUMERIC_VRS and not many:
        number = _NUMERIC_VRS[element.VR](value)
        return number if math.isfinite(number) else str(value)  # JSON has no NaN or infinity
    if element.VR == "UI":
        name = getattr(value, "name", "")
        return str(name) if name and name != str(value) else str(value)
    return "\\".join(str(v) for v in value) if many else str(value)


def dicom_labels(ds, keep_tags: bool = False) -> dict:
    """Metadata to store for a DICOM image: descriptive tags, plus identifying ones only when `keep_tags`."""
    names = DESCRIPTIVE_TAGS + (IDENTIFYING_TAGS if keep_tags else ())
    out = {}
    for keyword in names:
        if keyword not in ds:
            continue
        value = _plain(ds[keyword])
        if value not in (None, ""):
            out[keyword] = value
    return out


def dicom_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a DICOM image from its header alone."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise BadImageError(f"{path}: not a readable DICOM image header ({type(exc).__name__})") from exc
