"""Image files and bytes in: one path check, one list of accepted formats, every Pillow mode as uint8 pixels.

Archive images, sketches (CLI and HTTP) and "more like this" files all decode through `decode_pixels`, so one
file gives one answer everywhere: EXIF orientation applied, 16-bit and float scaled (never clipped), alpha kept
for the caller to composite (archive images on black, sketches on white paper).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from s2m_retrieval.errors import BadImageError, BadInputError, ImageTooLargeError, UnsupportedImageError

# Pillow format -> file extensions: what build, add, retrieve, sketch and the HTTP API accept, judged by content.
IMAGE_FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "BMP": (".bmp",), "TIFF": (".tif", ".tiff"),
                 "WEBP": (".webp",)}
IMAGE_EXTENSIONS = tuple(ext for exts in IMAGE_FORMATS.values() for ext in exts)
ACCEPTED = ", ".join(IMAGE_FORMATS)
DEFAULT_MAX_PIXELS = 64_000_000
_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def input_file(path: str | os.PathLike, what: str = "image", error: type[BadInputError] = BadInputError) -> Path:
    """`path` when it is a readable regular file; else one `error` line saying what it is instead (absent, a
    folder, a symlink loop, unreadable)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as exc:  # ELOOP (symlink loop), EACCES on a parent, ENAMETOOLONG, ...
        raise error(f"{what} file {path} cannot be opened: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the name (a manifest cell can hold one): no file can have that name
        raise error(f"{what} file not found: {path} (the name holds a NUL character)") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path} is a folder; give the {what} file itself")
    if not stat.S_ISREG(mode):
        raise error(f"{path} is not a regular file; give the {what} file itself")
    if not os.access(path, os.R_OK):
        raise error(f"{what} file {path} is not readable (permission denied)")
    return path


def is_image_name(name: str) -> bool:
    """Whether a file name has an extension Pillow can open (accepted or not: refused ones are counted)."""
    from PIL import Image

    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_EXTENSIONS or Image.registered_extensions().get(suffix) in Image.OPEN


def decode_pixels(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                  name: str | None = None) -> np.ndarray:
    """An image file (or its bytes) as uint8 RGB [H, W, 3], or RGBA [H, W, 4] when it has transparency.

    Refused with one line: a non-image or a format outside IMAGE_FORMATS (UnsupportedImageError), more than
    `max_pixels` pixels or a decompression bomb (ImageTooLargeError), an empty or truncated file (BadImageError).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, bytes):
        label, stream = name or "the image", io.BytesIO(source)
        if not source:
            raise BadImageError(f"{label}: empty file")
    else:
        path = input_file(source, error=BadImageError)
        label, stream = name or str(path), path
        if path.stat().st_size == 0:
            raise BadImageError(f"{label}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                if img.format not in IMAGE_FORMATS:
                    raise UnsupportedImageError(f"{label}: {img.format} images are not accepted (accepted: "
                                                f"{ACCEPTED})")
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageTooLargeError(f"{label}: {w}x{h} pixels, the pixel limit is {max_pixels} pixels")
                img.load()
                return mode_to_uint8(ImageOps.exif_transpose(img))
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: exceeds the decompression-bomb limit ({exc})") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{label}: not an image (accepted: {ACCEPTED}; judged by content, not name)"
                                    ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{label}: unreadable or truncated ({str(exc)[:80]})") from None


def mode_to_uint8(img) -> np.ndarray:
    """Any Pillow mode as uint8 RGB [H, W, 3], or RGBA [H, W, 4] when it carries transparency.

    16-bit grey is scaled by 65535; 32-bit integer and float images by the range their values fit
    ([0, 1], [0, 255], [0, 65535], else their own min..max), so no stroke or structure clips.
    """
    from PIL import Image

    if img.mode in _HIGH_BIT:
        grey = _scaled(np.asarray(img, dtype=np.float64), img.mode)
        return np.repeat(grey[..., None], 3, axis=2)
    alpha = "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info
    try:
        return np.asarray(img.convert("RGBA" if alpha else "RGB"), dtype=np.uint8)
    except ValueError:  # a mode Pillow cannot convert directly (e.g. premultiplied La)
        try:
            return np.asarray(img.convert("RGBA").convert("RGBA" if alpha else "RGB"), dtype=np.uint8)
        except ValueError:
            raise BadImageError(f"images of colour mode {img.mode} are not supported") from None


def _scaled(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grey values as uint8 [0, 255] (see `mode_to_uint8`)."""
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    if mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        top, low = 65535.0, 0.0
    elif mode == "F" and low >= 0 and high <= 1.0:
        top = 1.0
    elif low >= 0 and high <= 255:
        top, low = 255.0, 0.0
    else:
        top = high if high > low else low + 1.0
    return np.clip((values - low) / (top - low) * 255 + 0.5, 0, 255).astype(np.uint8)


def composite(pixels: np.ndarray, background: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] from `decode_pixels` output, transparency composited on grey level `background`."""
    if pixels.shape[-1] == 3:
        return pixels
    alpha = pixels[..., 3:].astype(np.float32) / 255.0
    return (pixels[..., :3] * alpha + float(background) * (1.0 - alpha)).round().astype(np.uint8)
