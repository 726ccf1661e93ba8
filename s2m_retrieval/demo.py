"""`s2m demo`: the main job end to end on the embedded defaults, offline."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from s2m_retrieval.errors import ArchiveError


# Queries: phantoms past the archive's last index, so none of them is stored in it.
N_QUERIES = 6
SHOW_K = 5
MARKER = ".s2m-demo.json"  # what an earlier demo made in its --out (its archive's settings), so a rerun may reuse it


def run_demo(out: str | Path, n: int = 2000, seed: int = 0, echo: Callable[[str], None] = print,
             models: str | Path | None = None, perceptual: str | None = None) -> str:
    """Make a phantom archive, index it, sketch held-out phantoms and retrieve them; everything under `out`.

    `models` is a folder of checkpoints instead of the shipped weights and `perceptual` a metric backend
    instead of the default one (tests use tiny random models).
    """
    from tqdm import tqdm

    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
    from s2m_retrieval.model.segmentation import segment_images
    from s2m_retrieval.viz import colour_labels, contact_sheet

    out = Path(out)
    archive = out / "archive"
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"--out {out} is a file; give a folder")
    if _reuse_or_clear(out, n, seed):
        echo(f"archive: reusing the {n} phantoms an earlier demo made in {archive}")
    else:
        t0 = time.perf_counter()
        with tqdm(total=n, unit="img", desc="phantom archive", disable=None) as bar:
            write_phantom_archive(archive, n=n, size=64, seed=seed, workers=None, progress=bar.update)
        (out / MARKER).write_text(json.dumps({"n": n, "seed": seed}) + "\n", encoding="utf-8")
        echo(f"archive: {n} phantoms in {archive} ({n / (time.perf_counter() - t0):.0f} images/s)")

    # Held-out queries: phantoms past the archive's last index, never stored in it.
    queries = out / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    tiles, captions = [], []
    held_out = [make_phantom(seed, n + i, 64) for i in range(N_QUERIES)]
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
    lines += _generator_samples(out, seed, models)
    lines += _retrieve(out, archive, queries, held_out, models, perceptual, echo)
    return "\n".join(lines)


def _reuse_or_clear(out: Path, n: int, seed: int) -> bool:
    """True when `out` holds the archive of an earlier demo with the same --n and --seed (reused as is); an
    earlier demo's archive and index of other settings are removed (the demo made them); an archive folder the
    demo did not make is never touched (ArchiveError)."""
    archive, marker = out / "archive", out / MARKER
    if not archive.exists():
        return False
    if not marker.is_file():
        raise ArchiveError(f"{archive} exists and was not made by s2m demo; pass another --out")
    try:
        made = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        made = None
    if made == {"n": n, "seed": seed} and (archive / "labels.csv").is_file():
        return True
    for folder in (archive, out / "home"):
        shutil.rmtree(folder, ignore_errors=True)
    marker.unlink()
    return False


def _retrieve(out: Path, archive: Path, queries: Path, held_out, models, perceptual, echo) -> list[str]:
    """Index the archive with the inverter, retrieve every query sketch, write one contact sheet per query."""
    from tqdm import tqdm

    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index
    from s2m_retrieval.query.engine import RetrievalEngine, read_sketch
    from s2m_retrieval.query.result_view import result_table, write_result_sheet

    options = ",".join(f"{k}={v}" for k, v in (("models", models), ("perceptual", perceptual)) if v is not None)
    encoder = load_encoder("inverter" + (f":{options}" if options else ""))
    home = out / "home"
    with tqdm(unit="img", desc="index demo", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        summary = build_index(archive, encoder, home=home, options=BuildOptions(name="demo"), progress=progress)
    echo(f"index: {summary.total} images in {home} ({summary.added} encoded, {summary.images_per_s:.1f} "
         "images/s)")
    del encoder
    results = out / "results"
    results.mkdir(exist_ok=True)
    lines = [f"index 'demo': {summary.total} images ({home}; query it with "
             f"`s2m retrieve SKETCH.png --home {home} --index demo`)"]
    matches = []
    with RetrievalEngine.open("demo", home=home, models=models, perceptual=perceptual) as engine:
        for i, (_, _, params) in enumerate(held_out):
            result = engine.query_sketch(read_sketch(queries / f"query{i}.png"), k=SHOW_K)
            sheet = results / f"query{i}.png"
            write_result_sheet(result, sheet)
            grades = [h.labels.get("tonsil_grade") for h in result.hits]
            scores = [h.labels.get("mallampati") for h in result.hits]
            matches.append(np.mean([g == params.tonsil_grade for g in grades]))
            lines.append(f"query{i} (true tonsil grade {params.tonsil_grade}, Mallampati {params.mallampati}): "
                         f"top-{SHOW_K} ids {[h.id for h in result.hits]}, grades {grades}, Mallampati {scores}, "
                         f"{result.timings_ms['total']:.0f} ms")
            if i == 0:
                first = result_table(result)
    lines.append(f"share of top-{SHOW_K} results with the query's tonsil grade: {np.mean(matches):.2f} "
                 f"(chance for this archive: {_chance(archive, [p.tonsil_grade for _, _, p in held_out]):.2f})")
    lines += ["query0 in full:"] + [f"  {line}" for line in first]
    lines.append(f"sheets: {results}/query*.png (query | x_hat | top-{SHOW_K} with scores)")
    return lines


def _chance(archive: Path, grades: list[int]) -> float:
    """Expected share of same-grade results when the top-k were drawn at random from the archive."""
    import csv

    with (archive / "labels.csv").open(newline="", encoding="utf-8") as fh:
        archive_grades = np.array([int(row["tonsil_grade"]) for row in csv.DictReader(fh)])
    return float(np.mean([(archive_grades == g).mean() for g in grades]))


def _generator_samples(out: Path, seed: int, models) -> list[str]:
    """A grid of the generator's samples."""
    from s2m_retrieval.model.files import model_files

    path = model_files(models, ("generator",), "the demo")["generator"]
    from s2m_retrieval.generation.report import generate_images
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.viz import contact_sheet

    samples = generate_images(load_generator(path), 16, seed)
    grid = out / "generator_samples.png"
    contact_sheet(list(samples), cols=8, tile_size=96, pad=2).save(grid)
    return [f"generator samples: {grid}"]


def _mean_dice(held_out, predicted) -> float:
    from s2m_retrieval.generation.dice import dice_per_class

    scores = [dice_per_class(pred, mask, 7) for (_, mask, _), pred in zip(held_out, predicted)]
    return float(np.nanmean(np.stack(scores)[:, 1:]))
