"""DICOM files (photographs, secondary captures, cines) as RGB pixels frame by frame, and which tags may be stored."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from s2m_retrieval.errors import ArchiveError, BadImageError, BadInputError

DICOM_EXTENSIONS = (".dcm", ".dicom")
_MAGIC_OFFSET = 128  # Part 10 files: 128-byte preamble, then "DICM"
# Which frames of a multi-frame file (cine, dose grid, enhanced CT/MR) an index takes: each one its own entry.
FRAME_CHOICES = ("first", "middle", "all")
FRAME_LABEL = "frame"  # the label holding the 0-based frame number of an entry of a multi-frame file

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


def open_dicom(path: str | os.PathLike):
    """The dataset of a DICOM file with pixel data (one decode of the file serves each of its frames)."""
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
    return ds


def frame_count(ds, path: str | os.PathLike) -> int:
    """How many frames a DICOM dataset holds (1 without NumberOfFrames); a malformed count is a bad file."""
    frames = _count(ds, "NumberOfFrames", Path(path), 1)
    if frames < 1:
        raise BadImageError(f"{path}: DICOM tag NumberOfFrames is malformed ({frames}, not a frame count)")
    return frames


def dicom_frame_count(path: str | os.PathLike) -> int:
    """How many frames a DICOM file holds, from its header alone."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise BadImageError(f"{path}: not a readable DICOM file ({type(exc).__name__})") from exc
    return frame_count(ds, path)


def check_frame_choice(choice: str) -> str:
    """`choice` when it is one of FRAME_CHOICES, else a one-line BadInputError."""
    if choice not in FRAME_CHOICES:
        raise BadInputError(f"unknown --frames {choice!r} (one of: {', '.join(FRAME_CHOICES)})")
    return choice


def pick_frames(n_frames: int, choice: str) -> list[int]:
    """The 0-based frames a --frames choice takes of a file holding `n_frames`: the first, the middle (N//2), all."""
    if check_frame_choice(choice) == "all":
        return list(range(n_frames))
    return [n_frames // 2 if choice == "middle" else 0]


def dicom_pixels(ds, path: str | os.PathLike, max_pixels: int, frame: int | None = None) -> np.ndarray:
    """RGB uint8 `[H, W, 3]` of one frame of an opened DICOM file (None: its first), windowed as that frame says."""
    path = Path(path)
    frames = frame_count(ds, path)
    rows, cols = _count(ds, "Rows", path, 0), _count(ds, "Columns", path, 0)
    index = 0 if frame is None else frame
    if not 0 <= index < frames:
        raise BadImageError(f"{path}: frame {index} asked for, the DICOM file holds {frames} frames")
    if rows * cols > max_pixels:
        raise BadImageError(f"{path}: {cols}x{rows} exceeds the pixel limit {max_pixels}")
    try:
        if frames == 1:
            pixels = ds.pixel_array
        else:  # decodes this frame only, not the whole cine
            from pydicom.pixels import pixel_array

            pixels = pixel_array(ds, index=index)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise BadImageError(f"{path}: DICOM pixel data cannot be decoded ({getattr(syntax, 'name', syntax)}; "
                            f"{str(exc)[:60]})") from exc
    return _to_rgb(pixels, ds, path, index)


def read_dicom(path: str | os.PathLike, max_pixels: int, frame: int | None = None) -> tuple[np.ndarray, object]:
    """RGB uint8 `[H, W, 3]` of one frame of a DICOM file (None: its first, or its only image), and its dataset."""
    ds = open_dicom(path)
    return dicom_pixels(ds, path, max_pixels, frame), ds


def _count(ds, tag: str, path: Path, default: int) -> int:
    """An integer tag of the dataset; a malformed value (e.g. NumberOfFrames '1A') is a bad file, not a crash."""
    try:
        value = getattr(ds, tag, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise BadImageError(f"{path}: DICOM tag {tag} is malformed ({str(getattr(ds, tag, ''))[:20]!r})") from None
    except Exception as exc:  # pydicom parses a value lazily and may raise its own types
        raise BadImageError(f"{path}: DICOM tag {tag} cannot be read ({type(exc).__name__})") from None


def _to_rgb(pixels: np.ndarray, ds, path: Path, frame: int = 0) -> np.ndarray:
    """Decoded DICOM pixels of one frame -> RGB uint8: grey via its window (else its own range), colour scaled to
    8 bits."""
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if samples == 1 and pixels.ndim == 2:
        slope = _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        grey = pixels.astype(np.float64) * (_number(slope, 1.0) or 1.0) + _number(intercept, 0.0)
        centre, width = _window(ds, frame)
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


def _frame_value(ds, frame: int, sequence: str, keyword: str):
    """A value of the dataset itself, else of the frame's functional group, else of the shared one (how enhanced
    multi-frame objects store windows and rescaling per frame)."""
    value = getattr(ds, keyword, None)
    if value is not None:
        return value
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            value = getattr(getattr(ds, groups)[index], sequence)[0].get(keyword)
        except (AttributeError, IndexError, TypeError, KeyError):
            continue
        if value is not None:
            return getattr(value, "value", value)
    return None


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value


def _number(value, default: float) -> float:
    try:
        return float(_first(value)) if value not in (None, "") else default
    except (TypeError, ValueError, IndexError):
        return default


def _window(ds, frame: int = 0) -> tuple[float, float | None]:
    centre = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if centre is None or width is None:
        return 0.0, None
    try:
        return float(_first(centre)), float(_first(width))
    except (TypeError, ValueError, IndexError):
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
