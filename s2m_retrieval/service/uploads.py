"""Sketch uploads: size-checked, then decoded by content (never the file name or the declared type).

Errors are domain exceptions: `UploadTooLarge` / `ImageTooLargeError` (HTTP 413), `UnsupportedImageError` (415),
`BadImageError` (400).
"""

from __future__ import annotations

import base64
import binascii
import re

import numpy as np

from s2m_retrieval.errors import BadImageError, BadInputError

DATA_URL_RE = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class UploadTooLarge(BadInputError):
    """An upload has more bytes or more pixels than the service accepts."""


class UnsupportedImage(BadInputError):
    """A request body of a content type the API does not take."""


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
    """Image bytes (any accepted format, judged by content) -> uint8 RGB [H, W, 3] or RGBA [H, W, 4]
    (transparency kept: it means paper), decoded as sketch files are (`image_io.decode_pixels`)."""
    from s2m_retrieval.data.image_io import decode_pixels

    if len(data) > max_bytes:
        raise UploadTooLarge(f"the sketch is {len(data)} bytes, the limit is {max_bytes} bytes")
    return decode_pixels(data, max_pixels, name="the sketch")
