"""Sketch uploads: the bytes are sniffed (never the file name or the declared type), size-checked, then decoded.

Errors are domain exceptions: `UploadTooLarge` (HTTP 413), `UnsupportedImage` (415), `BadImageError` (400).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np

from s2m_retrieval.errors import BadImageError, BadInputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DATA_URL_RE = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class UploadTooLarge(BadInputError):
    """An upload has more bytes or more pixels than the service accepts."""


class UnsupportedImage(BadInputError):
    """An upload is not a PNG or JPEG file."""


def sniff(data: bytes) -> str:
    """"PNG" or "JPEG" from the first bytes; anything else is UnsupportedImage."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if not data:
        raise BadImageError("the sketch is an empty file")
    raise UnsupportedImage("the sketch is not a PNG or JPEG file (judged by its content, not its name)")


def from_base64(text: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or a `data:...;base64,` URL, refused before decoding when too long."""
    text = DATA_URL_RE.sub("", text.strip(), count=1)
    if len(text) * 3 // 4 > max_bytes:
        raise UploadTooLarge(f"the sketch is about {len(text) * 3 // 4} bytes, the limit is {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImageError("the sketch is not valid base64 (send the PNG/JPEG bytes base64-encoded, or a "
                            "data: URL)") from None


def decode_sketch(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 RGB [H, W, 3] or RGBA [H, W, 4] (transparency kept: it means paper)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > max_bytes:
        raise UploadTooLarge(f"the sketch is {len(data)} bytes, the limit is {max_bytes} bytes")
    kind = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise UploadTooLarge(f"the sketch is {w}x{h} pixels, the limit is {max_pixels} pixels")
                img.load()
                img = ImageOps.exif_transpose(img)
                alpha = "A" in img.getbands() or "transparency" in img.info
                return np.asarray(img.convert("RGBA" if alpha else "RGB"), dtype=np.uint8)
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadTooLarge(f"the sketch exceeds the decompression-bomb limit ({max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise BadImageError(f"the sketch starts like a {kind} file but cannot be decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"the sketch {kind} is unreadable or truncated ({str(exc)[:80]})") from None
