"""`s2m demo`: the main job end to end on the embedded defaults, offline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from s2m_retrieval.errors import ArchiveError


def run_demo(out: str | Path, n: int = 2000, seed: int = 0, echo: Callable[[str], None] = print) -> str:
    """Make a phantom archive, free-hand sketches of held-out phantoms and contact sheets under `out`."""
    from tqdm import tqdm

    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
    from s2m_retrieval.segmentation import segment_images
    from s2m_retrieval.viz import colour_labels, contact_sheet

    out = Path(out)
    archive = out / "archive"
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"--out {out} is a file; give a folder")
    if archive.exists():
        raise ArchiveError(f"{archive} already exists (an earlier demo); pass another --out or remove it")
    t0 = time.perf_counter()
    with tqdm(total=n, unit="img", desc="phantom archive", disable=None) as bar:
        write_phantom_archive(archive, n=n, size=64, seed=seed, workers=None, progress=bar.update)
    echo(f"archive: {n} phantoms in {archive} ({n / (time.perf_counter() - t0):.0f} images/s)")

    # Held-out queries: phantoms past the archive's last index, never stored in it.
    queries = out / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    tiles, captions = [], []
    held_out = [make_phantom(seed, n + i, 64) for i in range(6)]
    predicted = segment_images([img for img, _, _ in held_out])
    for i, ((image, mask, params), pred) in enumerate(zip(held_out, predicted)):
        drawing = sketch_from_mask(mask, size=64, freehand=FreehandConfig(), seed=seed * 1000 + i)
        Image.fromarray(drawing).save(queries / f"query{i}.png")
        tiles += [image, colour_labels(mask), colour_labels(pred), drawing]
        captions += [f"held-out {i}", f"true: gr{params.tonsil_grade} M{params.mallampati}", "segmenter", "sketch"]
    sheet = out / "queries.png"
    contact_sheet(tiles, captions, cols=8, tile_size=96).save(sheet)
    dice = _mean_dice(held_out, predicted)
    lines = [f"queries: {len(held_out)} free-hand sketches in {queries}",
             f"sheet: {sheet} (image | true mask with tonsil grade and Mallampati | segmenter mask | sketch)",
             f"segmenter mean DICE on the held-out queries: {dice:.3f}"]
    lines += _generator_samples(out, seed)
    lines.append("retrieval (s2m retrieve) needs the Sketch2MedI encoder, refiner and inverter weights, "
                 "which are not shipped yet; see the README")
    return "\n".join(lines)


def _generator_samples(out: Path, seed: int) -> list[str]:
    """A grid of the shipped generator's samples, when it is shipped."""
    from s2m_retrieval.checkpoint import shipped_weights

    path = shipped_weights("generator")
    if not path.is_file():
        return ["generator: not shipped yet, no samples"]
    from s2m_retrieval.generation_report import generate_images
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.viz import contact_sheet

    samples = generate_images(load_generator(path), 16, seed)
    grid = out / "generator_samples.png"
    contact_sheet(list(samples), cols=8, tile_size=96, pad=2).save(grid)
    return [f"generator samples: {grid}"]


def _mean_dice(held_out, predicted) -> float:
    from s2m_retrieval.metrics import dice_per_class

    scores = [dice_per_class(pred, mask, 7) for (_, mask, _), pred in zip(held_out, predicted)]
    return float(np.nanmean(np.stack(scores)[:, 1:]))
