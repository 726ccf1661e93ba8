"""Contact sheets and label-map colouring for people to look at."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# One distinct colour per anatomical label id (0..6), background black.
LABEL_PALETTE = np.array([[0, 0, 0], [255, 140, 0], [230, 40, 200], [40, 200, 60],
                          [40, 90, 255], [250, 230, 40], [40, 230, 230]], np.uint8)


def colour_labels(mask: np.ndarray) -> np.ndarray:
    """A label map `[H, W]` as an RGB picture `[H, W, 3]`."""
    return LABEL_PALETTE[np.clip(mask, 0, len(LABEL_PALETTE) - 1)]


def _as_rgb(tile: np.ndarray) -> np.ndarray:
    if tile.ndim == 2:
        return np.repeat(tile[..., None], 3, axis=2)
    return tile[..., :3]


def contact_sheet(tiles: list[np.ndarray], captions: list[str] | None = None, cols: int = 8,
                  tile_size: int = 128, pad: int = 4, caption_height: int = 14) -> Image.Image:
    """Tiles (uint8 grey or RGB) in a grid, each resized to `tile_size`, with optional captions."""
    if not tiles:
        raise ValueError("contact sheet needs at least one tile")
    cols = max(1, min(cols, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    cap = caption_height if captions else 0
    w = cols * (tile_size + pad) + pad
    h = rows * (tile_size + pad + cap) + pad
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x = pad + c * (tile_size + pad)
        y = pad + r * (tile_size + pad + cap)
        img = Image.fromarray(_as_rgb(tile)).resize((tile_size, tile_size), Image.NEAREST
                                                   if tile.shape[0] < tile_size else Image.LANCZOS)
        sheet.paste(img, (x, y))
        if captions and i < len(captions) and captions[i]:
            draw.text((x + 1, y + tile_size + 1), captions[i][:tile_size // 6], fill=(0, 0, 0))
    return sheet


def output_image_format(path: str | os.PathLike) -> str:
    """The PIL format an image written to `path` gets from its extension; a folder, a parent that is a file
    or an unknown extension is a one-line BadInputError (checked before any work is done)."""
    from s2m_retrieval.errors import BadInputError

    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path} is a folder; give an image file name such as {path / 'out.png'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"cannot tell the image format of {path.name!r} from its extension; end it in .png or .jpg")
    return fmt
