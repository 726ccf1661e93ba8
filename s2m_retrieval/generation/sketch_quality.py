"""Sketch -> image quality of E, E + D, E + H (T steps), pix2pix and the unpaired baselines (CycleGAN, UNIT,
U-GAT-IT) on held-out phantom sketches; inverter quality."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.generation.dice import dice_per_class, mean_dice
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.model.pipeline import to_uint8
from s2m_retrieval.generation.quality import domain_features, frechet_distance

HELD_OUT_START = 1_000_000   # phantom indices far past any training archive: same distribution, unseen anatomy
EVAL_SKETCH_STREAM = 7919    # third SeedSequence word: eval sketches never share a stream with training variants
NA_MISSING = "n/a (weights missing)"
REFERENCE = "real images (reference)"
UNPAIRED_ROWS = {"cyclegan": "CycleGAN", "unit": "UNIT", "ugatit": "U-GAT-IT"}   # checkpoint kind -> row
SAMPLE_ROWS = 8


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Held-out sketches [N, R, R], their source masks [N, R, R], target images and N more real images (uint8)."""

    sketches: np.ndarray
    masks: np.ndarray
    images: np.ndarray           # [N, R, R, 3] the targets the sketches were drawn from
    reference: np.ndarray        # [N, R, R, 3] other real images: the Fréchet distance floor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sketches)


def held_out_phantoms(n: int, size: int, seed: int = 0, start: int = HELD_OUT_START, freehand: float = 1.0,
                      progress: Callable[[int, int], None] | None = None) -> HeldOut:
    """Phantoms start..start+n-1 of `seed` sketched free-hand at `freehand` x the default strength (0: clean)."""
    from s2m_retrieval.data.phantom import SUPPORTED_SIZES, make_phantom

    if n < 2 or size not in SUPPORTED_SIZES or freehand < 0:
        raise BadInputError(f"held-out phantoms need n >= 2, a size in {SUPPORTED_SIZES} and freehand >= 0")
    style = FreehandConfig().scaled(freehand) if freehand > 0 else None
    sketches, masks, images = [], [], []
    for k, index in enumerate(range(start, start + n)):
        image, mask, _ = make_phantom(seed, index, size)
        sketch_seed = int(np.random.SeedSequence([seed, index, EVAL_SKETCH_STREAM]).generate_state(1)[0])
        sketches.append(sketch_from_mask(mask, size, freehand=style, seed=sketch_seed))
        masks.append(mask)
        images.append(image)
        if progress is not None:
            progress(k + 1, 2 * n)
    reference = []
    for k, index in enumerate(range(start + n, start + 2 * n)):
        reference.append(make_phantom(seed, index, size)[0])
        if progress is not None:
            progress(n + k + 1, 2 * n)
    info = {"source": "phantom", "phantom_seed": seed, "start": start, "n": n, "size": size, "freehand": freehand,
            "reference": [start + n, start + 2 * n - 1]}
    return HeldOut(np.stack(sketches), np.stack(masks), np.stack(images), np.stack(reference), info)


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
                   max_steps: int = 5, optimise_steps: int = 20, batch: int = 32,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The quality report (JSON-ready) and the generated images per method; a str metric is an n/a reason."""
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
    for k, (name, fake) in enumerate(outputs.items()):
        rows.append({"method": name, "perceptual": _perceptual(metrics, fake, held.images),
                     "dice": sketch_dice(segment(segmenter, fake), held.masks),
                     "fd": frechet_distance(domain_features(fake, segmenter), real_feats)})
        step("score")(k + 1, len(outputs))
    rows.append({"method": REFERENCE, "perceptual": {name: None for name in metrics},
                 "dice": sketch_dice(segment(segmenter, held.images), held.masks),
                 "fd": frechet_distance(domain_features(held.reference, segmenter), real_feats)})
    inversion = invert_quality(models, held.images, metrics, optimise_steps, batch, step("invert"))
    report = {"held_out": held.info, "metrics": {k: v if isinstance(v, str) else v.version for k, v in metrics.items()},
              "max_steps": max_steps, "sketch_to_image": rows, "inversion": inversion, "notes": notes,
              "refiner_base": models.refiner_base}
    return report, outputs


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


def quality_markdown(report: dict) -> str:
    """The report as Markdown: the sketch -> image table, the inversion table, the notes."""
    held = report["held_out"]
    metrics = list(report["metrics"])
    lines = [f"Sketch -> image on {held['n']} held-out phantom sketches (seed {held['phantom_seed']}, phantoms "
             f"{held['start']}..{held['start'] + held['n'] - 1}, free-hand x{held['freehand']}, {held['size']} px)",
             "", "| method | " + " | ".join(f"{m} ↓" for m in metrics)
             + " | DICE S(x̂) vs mask ↑ | domain FD ↓ |",
             "|---" * (len(metrics) + 3) + "|"]
    for row in report["sketch_to_image"]:
        cells = [_cell(row["perceptual"][m], ".4f") for m in metrics] + [_cell(row["dice"], ".3f"),
                                                                        _cell(row["fd"], ".4f")]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if report["inversion"]:
        lines += ["", f"Archive inverter on the {held['n']} real target images (G(inv(image)) vs image)", "",
                  "| inversion | " + " | ".join(f"{m} ↓" for m in metrics) + " | PSNR dB ↑ | images/s |",
                  "|---" * (len(metrics) + 3) + "|"]
        for row in report["inversion"]:
            cells = [_cell(row["perceptual"][m], ".4f") for m in metrics] + [_cell(row["psnr"], ".2f"),
                                                                            _cell(row["images_per_s"], ".1f")]
            lines.append(f"| {row['inversion']} | " + " | ".join(cells) + " |")
    legend = ["seg: LPIPS-style distance over the segmenter's features"]
    if report["refiner_base"]:
        legend.append(f"H was trained on the {report['refiner_base']} encoder; T=0 is that encoder's row")
    opt = next((row for row in report["inversion"] if row["optimise_steps"]), None)
    if opt is not None:
        legend.append(f"opt. steps: Adam on W+ against L2 + {opt['optimise_metric'] or 'no perceptual'} distance, "
                      "images/s includes them")
    legend.append(f"{REFERENCE}: DICE of S on the targets (the segmenter's ceiling), FD of {held['n']} other "
                  "real phantoms (the floor)")
    lines += ["", "Notes:"] + [f"- {note}" for note in legend + report["notes"]]
    return "\n".join(lines) + "\n"


def sample_sheet(held: HeldOut, outputs: dict[str, np.ndarray], rows: int = SAMPLE_ROWS, tile: int = 96):
    """A PIL sheet: one row per held-out sketch, columns sketch | each method | target."""
    from s2m_retrieval.viz import contact_sheet

    names = ["sketch"] + list(outputs) + ["target"]
    tiles, captions = [], []
    for r in range(min(rows, len(held))):
        tiles += [held.sketches[r]] + [outputs[name][r] for name in outputs] + [held.images[r]]
        captions += names if r == 0 else [""] * len(names)
    return contact_sheet(tiles, captions, cols=len(names), tile_size=tile, pad=2)
