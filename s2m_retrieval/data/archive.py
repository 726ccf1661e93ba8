"""Archive reader: any folder of images or DICOM files (+ optional masks/ and labels.csv), streamed in batches."""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from s2m_retrieval.data.csv_table import read_table
from s2m_retrieval.data.dicom import (DICOM_EXTENSIONS, FRAME_LABEL, dicom_frame_count, dicom_labels, dicom_pixels,
                                     dicom_size, frame_count, is_dicom_path, open_dicom, pick_frames, read_dicom)
from s2m_retrieval.data.image_io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, composite, decode_pixels, input_file,
                                        is_image_name)
from s2m_retrieval.errors import ArchiveError, BadImageError, BadInputError

log = logging.getLogger(__name__)

FIT_POLICIES = ("crop", "pad")  # how a non-square image becomes square: centre crop, or black bars
# Folders of an archive that hold derived files rather than archive images.
RESERVED_DIRS = ("masks", "sketches")
FRAME_MARK = "#frame="  # the key of one frame of a multi-frame file: its path, FRAME_MARK, the 0-based frame
_FRAME_KEY = re.compile(rf"(.*){re.escape(FRAME_MARK)}(\d+)", re.DOTALL)


def frame_key(path: str | os.PathLike, frame: int | None) -> str:
    """The key an entry is stored under: its file's path, plus the frame number for a frame of a multi-frame file."""
    return str(path) if frame is None else f"{path}{FRAME_MARK}{frame}"


def frame_prefix(path: str | os.PathLike) -> str:
    """What the keys of every frame of a multi-frame file begin with."""
    return f"{path}{FRAME_MARK}"


def split_frame_key(key: str) -> tuple[str, int | None]:
    """(file path, frame or None) of a stored key (see `frame_key`); a file named like a key is that file."""
    match = _FRAME_KEY.fullmatch(key)
    if match is None or os.path.lexists(key):
        return key, None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, slots=True)  # one per image of an archive: no per-object dict
class ArchiveEntry:
    """One image of an archive: a file (or one frame of a multi-frame DICOM file), its mask and metadata row."""

    path: Path
    stem: str
    rel: str
    mask_path: Path | None = None
    labels: dict = field(default_factory=dict)
    frame: int | None = None  # 0-based, set for each entry of a multi-frame file (None: a single image)

    @property
    def key(self) -> str:
        """What identifies the entry: its path, with its frame number when it is one frame of a file."""
        return frame_key(self.path, self.frame)


@dataclass
class ReadStats:
    """Counts of what a read skipped, by reason, so nothing is dropped silently."""

    read: int = 0
    bad: Counter = field(default_factory=Counter)
    bad_files: list = field(default_factory=list)

    def record_bad(self, path: Path | str, reason: str) -> None:
        """Count one skipped file (or frame of a file, by its key) and remember why."""
        self.bad[reason] += 1
        self.bad_files.append((str(path), reason))

    @property
    def n_bad(self) -> int:
        """Number of skipped files."""
        return sum(self.bad.values())


@dataclass
class Batch:
    """Decoded images `[B, H, W, 3]` uint8 (and masks `[B, H, W]` when all entries have one)."""

    entries: list[ArchiveEntry]
    images: np.ndarray
    masks: np.ndarray | None


def _read_labels(root: Path) -> dict[str, dict]:
    """labels.csv rows keyed by file stem (from its `id` or `file` column)."""
    path = root / "labels.csv"
    if not path.is_file():
        return {}
    cols, table = read_table(path, ArchiveError)
    if "id" not in cols and "file" not in cols:
        raise ArchiveError(f"{path} needs an 'id' or 'file' column (has {', '.join(cols) or 'none'})")
    rows = {}
    for _, row in table:
        key = Path(row["file"]).stem if row.get("file") else row.get("id")
        if key:
            rows[key] = {k: parse_value(v) for k, v in row.items() if k not in ("file",)}
    return rows


def parse_value(text: str | None):
    """CSV cells as int, float or string, so filters can compare numbers. "nan", "inf", "1e999" stay text, as
    `--where` reads them: JSON has no such numbers (SQLite's JSON functions and PostgreSQL refuse them)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def scan_archive(root: str | os.PathLike) -> list[ArchiveEntry]:
    """All image and DICOM files under `root` (recursive, sorted), joined with masks/ and labels.csv by stem."""
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"archive folder not found: {root}")
    labels = _read_labels(root)
    mask_dir = root / "masks"
    masks = {p.stem: p for p in mask_dir.iterdir()} if mask_dir.is_dir() else {}
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in RESERVED_DIRS and not d.startswith(".")]
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            # Images in refused formats (e.g. .gif) are listed too: the read counts them with the reason.
            if not (is_image_name(name) or name.lower().endswith(DICOM_EXTENSIONS)) and not (
                    "." not in name and is_dicom_path(path)):
                continue
            stem = path.stem
            entries.append(ArchiveEntry(path=path, stem=stem, rel=str(path.relative_to(root)),
                                        mask_path=masks.get(stem), labels=labels.get(stem, {})))
    entries.sort(key=lambda e: e.rel)
    return entries


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int | None = None) -> np.ndarray:
    """Decode one image as RGB uint8 `[H, W, 3]` (see `image_io.decode_pixels`; alpha composited on black), or
    a DICOM file's pixels (`frame` of a multi-frame one, None: its first)."""
    input_file(path, error=BadImageError)
    if is_dicom_path(path):
        return read_dicom(Path(path), max_pixels, frame)[0]
    if frame not in (None, 0):
        raise BadImageError(f"{path}: frame {frame} asked for, the file holds one image")
    return composite(decode_pixels(path, max_pixels), background=0)


def entry_frames(path: str | os.PathLike, choice: str) -> list[int | None]:
    """The frames an index takes of a file under a --frames choice: [None] for a file of one image, else 0-based
    frame numbers (see `dicom.pick_frames`); reads a DICOM file's header only."""
    if not is_dicom_path(path):
        return [None]
    n_frames = dicom_frame_count(path)
    return [None] if n_frames == 1 else pick_frames(n_frames, choice)


def skip_reason(exc: Exception) -> str:
    """The reason a bad file is counted under: its error message without the path and the details in brackets."""
    return str(exc).split(": ", 1)[-1].split(" (")[0]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Decode a label map (uint8 `[H, W]`)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I;16", "I"):
                raise BadImageError(f"{path}: mask must be a single-channel label map, got mode {img.mode}")
            return np.asarray(img).astype(np.uint8)
    except BadImageError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: unreadable mask") from exc


def fit_square(image: np.ndarray, size: int, policy: str = "crop", nearest: bool = False) -> np.ndarray:
    """Centre-crop (or pad with black) to a square, then resize to `size` x `size`."""
    h, w = image.shape[:2]
    if policy == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[top:top + s, left:left + s]
    elif policy == "pad":  # black bars: nothing of the image is lost, the anatomy shrinks
        s = max(h, w)
        padded = np.zeros((s, s) + image.shape[2:], image.dtype)
        top, left = (s - h) // 2, (s - w) // 2
        padded[top:top + h, left:left + w] = image
        image = padded
    else:
        raise BadInputError(f"unknown fit policy {policy!r} (crop or pad)")
    if image.shape[0] == size:
        return np.ascontiguousarray(image)
    resample = Image.NEAREST if nearest else Image.BICUBIC
    if not nearest and image.shape[0] > size:
        resample = Image.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def iter_batches(entries: Iterable[ArchiveEntry], batch_size: int, size: int, *, with_masks: bool = False,
                 policy: str = "crop", max_pixels: int = DEFAULT_MAX_PIXELS, keep_tags: bool = False,
                 stats: ReadStats | None = None) -> Iterator[Batch]:
    """Stream decoded, squared images in batches; bad files are skipped and counted in `stats`.

    A DICOM entry comes back with its tags among its labels (labels.csv wins on a clash); tags that
    identify a patient only with `keep_tags` (see `dicom_labels`). An entry of a multi-frame file is its `frame`
    (None: the first), numbered in its `frame` label; consecutive frames of one file share one read of it.
    """
    stats = stats if stats is not None else ReadStats()
    buf_e, buf_i, buf_m = [], [], []
    opened: tuple[Path, object] | None = None  # the DICOM file read last, for the next frame of it
    for entry in entries:
        try:
            if is_dicom_path(entry.path):
                if opened is None or opened[0] != entry.path:
                    opened = None  # let the last file go before the next one is read
                    opened = (entry.path, open_dicom(entry.path))
                ds = opened[1]
                pixels = dicom_pixels(ds, entry.path, max_pixels, entry.frame)
                labels = {**dicom_labels(ds, keep_tags), **entry.labels}
                if frame_count(ds, entry.path) > 1:  # the frame number wins over a labels.csv column of that name
                    labels[FRAME_LABEL] = entry.frame or 0
                entry = replace(entry, labels=labels)
            else:
                pixels = read_image(entry.path, max_pixels, entry.frame)
            image = fit_square(pixels, size, policy)
            mask = None
            if with_masks:
                if entry.mask_path is None:
                    raise BadImageError(f"{entry.path}: no mask in masks/")
                mask = read_mask(entry.mask_path)
                if mask.shape[:2] != read_image_size(entry.path):
                    raise BadImageError(f"{entry.mask_path}: mask size differs from its image")
                mask = fit_square(mask, size, policy, nearest=True)
        except BadImageError as exc:
            stats.record_bad(entry.key, skip_reason(exc))
            log.warning("skipped %s", exc)
            continue
        stats.read += 1
        buf_e.append(entry)
        buf_i.append(image)
        if with_masks:
            buf_m.append(mask)
        if len(buf_e) == batch_size:
            yield Batch(buf_e, np.stack(buf_i), np.stack(buf_m) if with_masks else None)
            buf_e, buf_i, buf_m = [], [], []
    if buf_e:
        yield Batch(buf_e, np.stack(buf_i), np.stack(buf_m) if with_masks else None)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image after EXIF orientation, without decoding its pixels."""
    if is_dicom_path(path):
        return dicom_size(path)
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_archive_arrays(root: str | os.PathLike, size: int, *, with_masks: bool = False, limit: int | None = None,
                        policy: str = "crop", stats: ReadStats | None = None):
    """A whole (small) archive in memory: images `[N, S, S, 3]`, masks or None, and its entries."""
    entries = scan_archive(root)
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ArchiveError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS)})")
    images, masks, kept = [], [], []
    for batch in iter_batches(entries, 256, size, with_masks=with_masks, policy=policy, stats=stats):
        images.append(batch.images)
        kept.extend(batch.entries)
        if with_masks:
            masks.append(batch.masks)
    if not kept:
        raise ArchiveError(f"no readable images in {root}")
    return np.concatenate(images), (np.concatenate(masks) if with_masks else None), kept
