"""Sketch -> image quality of E, E + D, E + H (T steps), pix2pix and the unpaired baselines (CycleGAN, UNIT,
U-GAT-IT) on held-out phantom sketches, per sketch set with the generalization gap; inverter quality."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
from s2m_retrieval.data.canonical import canonical_sketch
from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.generation.dice import dice_per_class, mean_dice
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.model.pipeline import to_uint8
from s2m_retrieval.generation.quality import domain_features, frechet_distance, realism_accuracy

HELD_OUT_START = 1_000_000   # phantom indices far past any training archive: same distribution, unseen anatomy
EVAL_SKETCH_STREAM = 7919    # third SeedSequence word: eval sketches never share a stream with training variants
NA_MISSING = "n/a (weights missing)"
REFERENCE = "real images (reference)"
UNPAIRED_ROWS = {"cyclegan": "CycleGAN", "unit": "UNIT", "ugatit": "U-GAT-IT"}   # checkpoint kind -> row
SAMPLE_COLUMNS = 5  # sketches on the sample sheet, one row per method
REALISM = "realism proxy: real-vs-x̂ classifier acc. (0.5 best)"
GAP_REALISM = "Δ real-vs-x̂ classifier acc."
# The sketch sets of one held-out run, all drawn from the same phantoms: "synthesized" is S's free-hand style the
# networks were trained on; the others are make-queries' held-out styles (data.query_styles.QUERY_STYLES, drawn by
# its draw_query). Every set is canonicalised as training pairs and queries are.
SKETCH_SETS = {
    "synthesized": "S's free-hand outlines of the masks, the style the networks were trained on",
    "unseen": "make-queries' unseen style, never trained on: rounder outlines, a 256 px canvas, a thicker pen",
    "traced": "make-queries' traced style, never trained on: the image's own edges traced, no mask",
}
DEFAULT_SETS = ("synthesized", "unseen")
GAP_BASE = "synthesized"      # the gap of every other set is measured against it


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Held-out sketches [N, R, R] of one set, their source masks [N, R, R], target images and N more real images
    (uint8)."""

    sketches: np.ndarray
    masks: np.ndarray
    images: np.ndarray           # [N, R, R, 3] the targets the sketches were drawn from
    reference: np.ndarray        # [N, R, R, 3] other real images: the Fréchet distance floor
    info: dict = field(default_factory=dict)
    sketch_set: str = "synthesized"

    def __len__(self) -> int:
        return len(self.sketches)


def parse_sets(text: str) -> tuple[str, ...]:
    """Comma-separated sketch set names (SKETCH_SETS), in the order given, each once; unknown or none is an error."""
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    for name in names or ("",):
        _check_set(name)
    return names


def _check_set(name: str) -> None:
    if name not in SKETCH_SETS:
        raise BadInputError(f"unknown sketch set {name!r}; choose from {', '.join(SKETCH_SETS)} (comma-separated)")


def draw_sketches(sketch_set: str, masks: np.ndarray, images: np.ndarray, info: dict,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Canonical sketches uint8 [N, R, R] of held-out masks (images, for traced) in a set's style, seeded by
    (phantom seed, phantom index, set): the same set of the same phantoms is the same in every run."""
    from s2m_retrieval.data.query_styles import QUERY_STYLES, draw_query

    _check_set(sketch_set)
    stream = [EVAL_SKETCH_STREAM] + ([list(SKETCH_SETS).index(sketch_set)] if sketch_set != "synthesized" else [])
    style = FreehandConfig().scaled(info["freehand"]) if info["freehand"] > 0 else None
    size, out = masks.shape[1], []
    for k, (mask, image) in enumerate(zip(masks, images)):
        seed = int(np.random.SeedSequence([info["phantom_seed"], info["start"] + k, *stream]).generate_state(1)[0])
        if sketch_set == "synthesized":
            drawn = sketch_from_mask(mask, size, freehand=style, seed=seed)
        else:
            drawn = draw_query(mask, QUERY_STYLES[sketch_set], seed=seed, image=image)
        out.append(canonical_sketch(drawn, size))
        if progress is not None:
            progress(k + 1, len(masks))
    return np.stack(out)


def redraw(held: HeldOut, sketch_set: str, progress: Callable[[int, int], None] | None = None) -> HeldOut:
    """The same held-out phantoms (masks, targets, reference) sketched in another set's style."""
    return dataclasses.replace(held, sketches=draw_sketches(sketch_set, held.masks, held.images, held.info, progress),
                               sketch_set=sketch_set)


def held_out_phantoms(n: int, size: int, seed: int = 0, start: int = HELD_OUT_START, freehand: float = 1.0,
                      progress: Callable[[int, int], None] | None = None,
                      sketch_set: str = "synthesized") -> HeldOut:
    """Phantoms start..start+n-1 of `seed` sketched in `sketch_set` (SKETCH_SETS; the synthesized set free-hand at
    `freehand` x the default strength, 0: clean), and phantoms start+n..start+2n-1 as the real reference."""
    from s2m_retrieval.data.phantom import SUPPORTED_SIZES, make_phantom

    if n < 2 or size not in SUPPORTED_SIZES or freehand < 0:
        raise BadInputError(f"held-out phantoms need n >= 2, a size in {SUPPORTED_SIZES} and freehand >= 0")
    phantoms = []
    for k, index in enumerate(range(start, start + 2 * n)):
        phantoms.append(make_phantom(seed, index, size))
        if progress is not None:
            progress(k + 1, 3 * n)
    info = {"source": "phantom", "phantom_seed": seed, "start": start, "n": n, "size": size, "freehand": freehand,
            "reference": [start + n, start + 2 * n - 1]}
    masks, images = np.stack([p[1] for p in phantoms[:n]]), np.stack([p[0] for p in phantoms[:n]])
    sketches = draw_sketches(sketch_set, masks, images, info,
                             None if progress is None else lambda done, total: progress(2 * n + done, 3 * n))
    return HeldOut(sketches, masks, images, np.stack([p[0] for p in phantoms[n:]]), info, sketch_set)


def overlaps_training(held: dict, data: dict) -> bool:
    """Whether held-out phantoms (info of held_out_phantoms) fall inside a checkpoint's phantom training data."""
    if data.get("source") != "phantom" or data.get("phantom_seed") != held["phantom_seed"]:
        return False
    lo, hi = data.get("start", 0), data.get("start", 0) + data.get("n", 0)
    return lo < held["start"] + 2 * held["n"] and held["start"] < hi


def sketch_dice(pred_masks: np.ndarray, true_masks: np.ndarray, num_classes: int = 7) -> float:
    """Mean over images of the mean DICE over classes 1..num_classes-1 present in either map."""
    if pred_masks.shape != true_masks.shape:
        raise ValueError(f"predicted {pred_masks.shape} and true masks {true_masks.shape} differ in shape")
    scores = [mean_dice(dice_per_class(p, t, num_classes)) for p, t in zip(pred_masks, true_masks)]
    return float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images [N, H, W, 3] (peak 255), capped at 100 dB for identical images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 255.0 ** 2 * 1e-10))


@dataclass
class Models:
    """Frozen G and whichever compared networks were given; `refiner_base` names the E that H was trained on."""

    G: torch.nn.Module
    encoder: torch.nn.Module | None = None          # E trained with the latent discriminator D
    encoder_alone: torch.nn.Module | None = None    # E trained without it (--no-adv)
    refiner: torch.nn.Module | None = None
    refiner_base: str | None = None                 # "E + D" or "E alone"
    pix2pix: torch.nn.Module | None = None
    inverter: torch.nn.Module | None = None
    data: dict = field(default_factory=dict)        # training data info per component (overlap check)
    unpaired: dict = field(default_factory=dict)    # row (CycleGAN, UNIT, U-GAT-IT) -> its sketch -> image network


def load_models(generator: str | os.PathLike, encoder=None, encoder_alone=None, refiner=None, pix2pix=None,
                inverter=None, device: str | torch.device = "cpu", *, cyclegan=None, unit=None,
                ugatit=None) -> Models:
    """Load the given checkpoints; each must have been trained on this G (and H on one of the given E's)."""
    from s2m_retrieval.networks.cyclegan import load_cyclegan
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.networks.pix2pix import load_pix2pix
    from s2m_retrieval.networks.ugatit import load_ugatit
    from s2m_retrieval.networks.unit import load_unit
    from s2m_retrieval.networks.encoders import load_encoder, load_inverter
    from s2m_retrieval.networks.refiner import load_refiner

    g_payload = load_checkpoint(generator, kind="generator")
    g_version = version_hash(g_payload)
    paths = {"encoder": encoder, "encoder_alone": encoder_alone, "refiner": refiner, "pix2pix": pix2pix,
             "inverter": inverter, "cyclegan": cyclegan, "unit": unit, "ugatit": ugatit}
    kinds = {"encoder_alone": "encoder"}
    payloads = {k: load_checkpoint(p, kind=kinds.get(k, k)) for k, p in paths.items() if p is not None}
    for name, payload in payloads.items():
        want = payload.get("meta", {}).get("generator_version")
        if name != "pix2pix" and want is not None and want != g_version:
            raise CheckpointError(f"{paths[name]} was trained against generator {want}, not {generator} "
                                  f"({g_version}); pass the generator it was trained with")
    for name, with_d in (("encoder", True), ("encoder_alone", False)):
        trained = payloads.get(name, {}).get("meta", {}).get("with_latent_discriminator")
        if trained is not None and trained != with_d:
            flag = "--encoder-alone" if trained is False else "--encoder"
            raise BadInputError(f"{paths[name]} was trained {'with' if trained else 'without'} the latent "
                                f"discriminator: pass it as {flag}")
    models = Models(load_generator(g_payload, device).requires_grad_(False),
                    data={k: p.get("meta", {}).get("data", {}) for k, p in payloads.items()})
    if "encoder" in payloads:
        models.encoder = load_encoder(payloads["encoder"], device)
    if "encoder_alone" in payloads:
        models.encoder_alone = load_encoder(payloads["encoder_alone"], device)
    if "refiner" in payloads:
        want = payloads["refiner"].get("meta", {}).get("encoder_version")
        bases = {version_hash(payloads[k]): label for k, label in (("encoder", "E + D"), ("encoder_alone", "E alone"))
                 if k in payloads}
        if want not in bases:
            raise CheckpointError(f"the refiner {refiner} was trained on encoder {want}; pass that encoder as "
                                  "--encoder (or --encoder-alone)")
        models.refiner, models.refiner_base = load_refiner(payloads["refiner"], device), bases[want]
    if "pix2pix" in payloads:
        models.pix2pix = load_pix2pix(payloads["pix2pix"], device)
    if "inverter" in payloads:
        models.inverter = load_inverter(payloads["inverter"], device)
    for kind, load in (("cyclegan", load_cyclegan), ("unit", load_unit), ("ugatit", load_ugatit)):
        if kind in payloads:
            models.unpaired[UNPAIRED_ROWS[kind]] = load(payloads[kind], device)
    return models


@torch.no_grad()
def generate_all(models: Models, sketches: np.ndarray, max_steps: int, batch: int,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """x_hat of every available method for uint8 sketches [N, R, R] -> {method: uint8 [N, R, R, 3]}."""
    from s2m_retrieval.networks.refiner import refine

    G = models.G
    device = G.w_avg.device
    res = G.config.img_resolution
    if sketches.shape[1:] != (res, res):
        raise BadInputError(f"sketches are {list(sketches.shape[1:])} px, the generator makes {res} px")
    for name, net in {"pix2pix": models.pix2pix, **models.unpaired}.items():
        if net is not None and net.config.img_resolution != res:
            raise BadInputError(f"{name} works at {net.config.img_resolution} px, G at {res} px")
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(sketches), batch):
        x = torch.from_numpy(sketches[i:i + batch]).float().div(127.5).sub(1.0)[:, None].to(device)  # [B, 1, R, R]
        if models.encoder_alone is not None:
            out.setdefault("E alone", []).append(to_uint8(G(models.encoder_alone(x), noise_mode="const")))
        if models.encoder is not None:
            out.setdefault("E + D", []).append(to_uint8(G(models.encoder(x), noise_mode="const")))
        if models.refiner is not None:
            base = models.encoder if models.refiner_base == "E + D" else models.encoder_alone
            _, images = refine(models.refiner, G, base(x), x, max_steps)
            for t in range(1, max_steps + 1):            # images[0] is the base encoder's row already
                out.setdefault(f"{models.refiner_base} + H, T={t}", []).append(to_uint8(images[t]))
        if models.pix2pix is not None:
            out.setdefault("pix2pix", []).append(to_uint8(models.pix2pix(x)))
        for name, net in models.unpaired.items():
            out.setdefault(name, []).append(to_uint8(net(x)))
        if progress is not None:
            progress(min(i + batch, len(sketches)), len(sketches))
    return {name: np.concatenate(parts) for name, parts in out.items()}


@torch.no_grad()
def mean_distance(metric: PerceptualDistance, a: np.ndarray, b: np.ndarray, batch: int = 64) -> float:
    """Mean perceptual distance between paired uint8 images [N, R, R, 3]."""
    device = next(metric.backbone.parameters()).device
    total = 0.0
    for i in range(0, len(a), batch):
        x, y = (torch.from_numpy(v[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
                for v in (a, b))
        total += metric.distance(x, y).sum().item()
    return total / len(a)


def _perceptual(metrics: dict, fake: np.ndarray, target: np.ndarray) -> dict:
    return {name: m if isinstance(m, str) else mean_distance(m, fake, target) for name, m in metrics.items()}


def sketch_quality(held: HeldOut, models: Models, segmenter, metrics: dict[str, PerceptualDistance | str], *,
                   max_steps: int = 5, optimise_steps: int = 20, batch: int = 32, realism: bool = False,
                   inversion: bool = True,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The quality report of one sketch set (JSON-ready) and the generated images per method; a str metric is an
    n/a reason. `realism` adds the realism proxy (quality.realism_accuracy of x̂ vs the targets); `inversion`
    the inverter's table."""
    from s2m_retrieval.networks.segmenter import segment

    def step(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: progress is not None and progress(stage, done, total)

    notes = []
    for name, data in models.data.items():
        if overlaps_training(held.info, data):
            raise BadInputError(f"the held-out phantoms overlap the {name}'s training phantoms (seed "
                                f"{data['phantom_seed']}, {data.get('start', 0)}..+{data['n']}); pick another "
                                "--seed or --start")
    for label, present, flag in (("E alone", models.encoder_alone, "--encoder-alone"),
                                 ("E + D", models.encoder, "--encoder"), ("E + H", models.refiner, "--refiner"),
                                 ("pix2pix", models.pix2pix, "--pix2pix"), ("inverter", models.inverter, "--inverter")):
        if present is None:
            notes.append(f"{label}: omitted, no checkpoint given ({flag})")
    for kind, label in UNPAIRED_ROWS.items():
        split = models.data.get(kind, {}).get("unpaired")
        if label in models.unpaired and split:
            (s0, s1), (i0, i1) = split["sketches_of"], split["images_of"]
            notes.append(f"{label}: trained unpaired, on the sketches of images {s0}..{s1 - 1} and the images "
                         f"{i0}..{i1 - 1}")
    outputs = generate_all(models, held.sketches, max_steps, batch, step("generate"))
    real_feats = domain_features(held.images, segmenter)
    rows = []
    for k, (name, fake) in enumerate([*outputs.items(), (REFERENCE, held.reference)]):
        feats = domain_features(fake, segmenter)
        row = {"method": name, "perceptual": {m: None for m in metrics} if name == REFERENCE
               else _perceptual(metrics, fake, held.images),
               "dice": sketch_dice(segment(segmenter, held.images if name == REFERENCE else fake), held.masks),
               "fd": frechet_distance(feats, real_feats)}
        if realism:
            row["realism"] = realism_accuracy(real_feats, feats)
        rows.append(row)
        if name != REFERENCE:
            step("score")(k + 1, len(outputs))
    report = {"held_out": held.info, "sketch_set": _set_info(held),
              "metrics": {k: v if isinstance(v, str) else v.version for k, v in metrics.items()},
              "max_steps": max_steps, "sketch_to_image": rows,
              "inversion": invert_quality(models, held.images, metrics, optimise_steps, batch, step("invert"))
              if inversion else [], "notes": notes, "refiner_base": models.refiner_base}
    return report, outputs


def _set_info(held: HeldOut) -> dict:
    from s2m_retrieval.data.query_styles import QUERY_STYLES

    about = SKETCH_SETS[held.sketch_set]
    if held.sketch_set == "synthesized":
        about += f", free-hand x{held.info['freehand']}"
    style = dataclasses.asdict(QUERY_STYLES[held.sketch_set]) if held.sketch_set in QUERY_STYLES else {
        "freehand": held.info["freehand"]}
    return {"name": held.sketch_set, "about": about, "style": style}


def sketch_sets_quality(sets: dict[str, HeldOut], models: Models, segmenter, metrics: dict, *, max_steps: int = 5,
                        optimise_steps: int = 20, batch: int = 32,
                        progress: Callable[[str, int, int], None] | None = None) -> tuple[dict, dict[str, dict]]:
    """The report over sketch sets of the same held-out phantoms (`redraw`) and the x̂ per set and method.

    Each set gets its table with the realism proxy (`sketch_sets[name]`), the first set's table is also the
    report's `sketch_to_image`, the inverter runs once, and `gap[name]` holds, per method, each metric of set
    `name` minus that of the synthesized set (GAP_BASE; no gap without it).
    """
    if not sets:
        raise BadInputError("no sketch set to measure")
    first = next(iter(sets.values()))
    if any(held.info != first.info or held.images is not first.images for held in sets.values()):
        raise ValueError("sketch sets must be drawn from the same held-out phantoms (redraw one HeldOut)")
    reports, outputs = {}, {}
    for k, (name, held) in enumerate(sets.items()):
        reports[name], outputs[name] = sketch_quality(
            held, models, segmenter, metrics, max_steps=max_steps, optimise_steps=optimise_steps, batch=batch,
            realism=True, inversion=k == 0,
            progress=None if progress is None else lambda stage, done, total, name=name: progress(
                f"{name}: {stage}", done, total))
    report = {key: value for key, value in reports[next(iter(sets))].items() if key != "sketch_set"}
    report["sketch_sets"] = {name: {**r["sketch_set"], "sketch_to_image": r["sketch_to_image"]}
                             for name, r in reports.items()}
    report["gap"] = {name: sketch_gap(reports[GAP_BASE]["sketch_to_image"], r["sketch_to_image"])
                     for name, r in reports.items() if name != GAP_BASE and GAP_BASE in reports}
    if GAP_BASE not in reports:
        report["notes"] = report["notes"] + [f"no generalization gap: the sets do not include {GAP_BASE}"]
    return report, outputs


def sketch_gap(base_rows: list[dict], rows: list[dict]) -> list[dict]:
    """Per method in both tables (not the reference): each metric of `rows` minus that of `base_rows`; None where
    either side is n/a."""
    def minus(b, a):
        return None if isinstance(a, (str, type(None))) or isinstance(b, (str, type(None))) else b - a

    base = {row["method"]: row for row in base_rows}
    out = []
    for row in rows:
        a = base.get(row["method"])
        if a is None or row["method"] == REFERENCE:
            continue
        out.append({"method": row["method"],
                    "perceptual": {m: minus(v, a["perceptual"].get(m)) for m, v in row["perceptual"].items()},
                    **{key: minus(row[key], a[key]) for key in ("dice", "fd", "realism") if key in row and key in a}})
    return out


def invert_quality(models: Models, images: np.ndarray, metrics: dict, optimise_steps: int, batch: int,
                   progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Rows of G(inv(image)) vs image: ReStyle iterations 1..3 (1 without), then + optimisation; with images/s."""
    from s2m_retrieval.model.inversion import invert

    if models.inverter is None:
        return []
    G, inverter = models.G, models.inverter
    device = G.w_avg.device
    settings = [(k, 0) for k in range(1, (3 if inverter.config.extra_channels else 1) + 1)]
    loaded = [m for m in metrics.values() if not isinstance(m, str)]
    if optimise_steps > 0:
        settings.append((settings[-1][0], optimise_steps))
    rows = []
    for k, (iterations, steps) in enumerate(settings):
        recon, seconds = [], 0.0
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
            t0 = time.perf_counter()
            w = invert(inverter, G, x, iterations, steps, loaded[0] if loaded else None)
            seconds += time.perf_counter() - t0
            with torch.no_grad():
                recon.append(to_uint8(G(w, noise_mode="const")))
        recon = np.concatenate(recon)
        label = f"{iterations} iteration{'s' if iterations > 1 else ''}" + (f" + {steps} opt. steps" if steps else "")
        rows.append({"inversion": label, "iterations": iterations, "optimise_steps": steps,
                     "optimise_metric": (loaded[0].name if loaded else None) if steps else None,
                     "perceptual": _perceptual(metrics, recon, images), "psnr": float(psnr(recon, images).mean()),
                     "images_per_s": len(images) / max(seconds, 1e-9)})
        if progress is not None:
            progress(k + 1, len(settings))
    return rows


def _cell(value, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return "nan" if value != value else format(value, fmt)


def _table(rows: list[dict], metrics: list[str], first: str, signed: bool = False) -> list[str]:
    """Markdown rows of sketch -> image rows (or their gaps: `signed`); the realism column where rows have it."""
    realism = any("realism" in row for row in rows)
    prefix = "Δ " if signed else ""
    head = ([f"{prefix}{m} ↓" for m in metrics] + [f"{prefix}DICE S(x̂) vs mask ↑", f"{prefix}domain FD ↓"]
            + ([GAP_REALISM if signed else REALISM] if realism else []))
    lines = [f"| {first} | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    sign = "+" if signed else ""
    for row in rows:
        cells = ([_cell(row["perceptual"][m], sign + ".4f") for m in metrics]
                 + [_cell(row["dice"], sign + ".3f"), _cell(row["fd"], sign + ".4f")]
                 + ([_cell(row.get("realism"), sign + ".3f")] if realism else []))
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return lines


def quality_markdown(report: dict) -> str:
    """The report as Markdown: a sketch -> image table per sketch set, the gap table, the inversion table, notes."""
    held = report["held_out"]
    metrics = list(report["metrics"])
    sets = report.get("sketch_sets") or {report["sketch_set"]["name"]: {**report["sketch_set"],
                                                                        "sketch_to_image": report["sketch_to_image"]}}
    lines = [f"Sketch -> image on {held['n']} held-out phantoms (seed {held['phantom_seed']}, phantoms "
             f"{held['start']}..{held['start'] + held['n'] - 1}, {held['size']} px), sketched in "
             + ", ".join(sets) + " style"]
    for name, block in sets.items():
        lines += ["", f"Sketch set {name}: {block['about']}", "", *_table(block["sketch_to_image"], metrics, "method")]
    gaps = report.get("gap") or {}
    if gaps:
        lines += ["", f"Generalization gap: each held-out set minus {GAP_BASE}, per method, on the same images "
                      "(+ on a ↓ column, − on a ↑ one: worse on the held-out sketches)", ""]
        rows = [{**row, "method": f"{row['method']} ({name} − {GAP_BASE})"} for name, gap in gaps.items()
                for row in gap]
        lines += _table(rows, metrics, "method (set − base)", signed=True)
    if report["inversion"]:
        lines += ["", f"Archive inverter on the {held['n']} real target images (G(inv(image)) vs image)", "",
                  "| inversion | " + " | ".join(f"{m} ↓" for m in metrics) + " | PSNR dB ↑ | images/s |",
                  "|---" * (len(metrics) + 3) + "|"]
        for row in report["inversion"]:
            cells = [_cell(row["perceptual"][m], ".4f") for m in metrics] + [_cell(row["psnr"], ".2f"),
                                                                            _cell(row["images_per_s"], ".1f")]
            lines.append(f"| {row['inversion']} | " + " | ".join(cells) + " |")
    legend = ["seg: LPIPS-style distance over the segmenter's features",
              "every sketch set is canonicalised (binarised, thinned, redrawn) as training pairs and queries are"]
    realism = any("realism" in row for block in sets.values() for row in block["sketch_to_image"])
    if realism:
        legend.append(f"{REALISM}: held-out accuracy of a logistic real-vs-generated classifier on the segmenter's "
                      "domain features, fitted on the even targets and x̂, scored on the odd ones; 0.5: it cannot "
                      "tell x̂ from real, 1: it always can. A machine proxy, not a human opinion score")
    if report["refiner_base"]:
        legend.append(f"H was trained on the {report['refiner_base']} encoder; T=0 is that encoder's row")
    opt = next((row for row in report["inversion"] if row["optimise_steps"]), None)
    if opt is not None:
        legend.append(f"opt. steps: Adam on W+ against L2 + {opt['optimise_metric'] or 'no perceptual'} distance, "
                      "images/s includes them")
    legend.append(f"{REFERENCE}: DICE of S on the targets (the segmenter's ceiling), FD{' and realism' * realism} "
                  f"of {held['n']} other real phantoms (the floor)")
    lines += ["", "Notes:"] + [f"- {note}" for note in legend + report["notes"]]
    return "\n".join(lines) + "\n"


def sample_sheet(held: HeldOut, outputs: dict[str, np.ndarray], columns: int = SAMPLE_COLUMNS, tile: int = 96):
    """A PIL sheet: one row per method on the same first `columns` held-out sketches, the sketches above and the
    real images below; each row's first tile is captioned with its method."""
    from s2m_retrieval.viz import contact_sheet

    n = min(columns, len(held))
    rows = [("sketch", held.sketches[:n])] + list(outputs.items()) + [("target", held.images[:n])]
    tiles = [row[i] for _, row in rows for i in range(n)]
    captions = [name if i == 0 else "" for name, _ in rows for i in range(n)]
    return contact_sheet(tiles, captions, cols=n, tile_size=tile, pad=2)
