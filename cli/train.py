"""`s2m train ...`: train the networks on an archive, resumable, with progress bars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.runtime import DEVICE_HELP, shared_options
from cli.train_all import train_all

if TYPE_CHECKING:
    from s2m_retrieval.training.pairs import PairSet

app = typer.Typer(help="Train the networks (segmenter, generator, ...) on an archive.", no_args_is_help=True)
app.command("all")(train_all)


def _device(name: str) -> str:
    """'auto' picks CUDA when present, else the CPU; an unusable choice is a one-line error."""
    from cli.runtime import setup_torch

    return setup_torch(0, name)


@app.command("generator")
def generator(
    archive: Path = typer.Argument(..., help="Archive folder of training images."),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt (resume state), samples/, generator.pt."),
    res: int = typer.Option(64, "--res", help="Image resolution (power of two: 64, 128, 256)."),
    kimg: float = typer.Option(500.0, "--kimg", help="Total thousands of images shown to D."),
    batch: int = typer.Option(32, "--batch", help="Batch size."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    channel_base: int = typer.Option(1024, "--channel-base", help="Channels at resolution r = base / r ..."),
    channel_max: int = typer.Option(128, "--channel-max", help="... capped at this."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N archive images."),
    snapshot_every: int = typer.Option(250, "--snapshot-every", help="Steps between resumable snapshots."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore an existing latest.pt and start over."),
) -> None:
    """Train the StyleGAN2 generator G; rerun the same command to resume from the last snapshot."""
    import torch

    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.networks.stylegan2 import GeneratorConfig
    from s2m_retrieval.training.gan import GanTrainConfig, train_generator

    stats = ReadStats()
    images, _, entries = load_archive_arrays(archive, res, limit=limit, stats=stats)
    typer.echo(f"training on {len(entries)} images from {archive}"
               + (f" ({stats.n_bad} bad files skipped)" if stats.n_bad else ""))
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g_config = GeneratorConfig(img_resolution=res, channel_base=channel_base, channel_max=channel_max)
    t_config = GanTrainConfig(batch=batch, total_kimg=kimg, seed=seed, snapshot_every=snapshot_every)
    path = train_generator(data, out, g_config=g_config, train_config=t_config, device=_device(device),
                           resume=not fresh)
    typer.echo(f"generator: {path}")
    _curves_note(out)


@app.command("segmenter")
def segmenter(
    archive: Path = typer.Argument(..., help="Archive folder with masks/ (label maps, same stems)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (training curves: beside it, in "
                                                 "<name>_curves/)."),
    res: int = typer.Option(64, "--res", help="Training resolution."),
    steps: int = typer.Option(2000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    lr: float = typer.Option(5e-3, "--lr", help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Training seed (also picks the held-out split)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N archive images."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint at --out."),
) -> None:
    """Train the segmenter of the sketch synthesizer S; prints held-out DICE per class."""
    if out.exists() and not overwrite:
        from s2m_retrieval.errors import BadInputError

        raise BadInputError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    import torch
    from tqdm import tqdm

    from s2m_retrieval.data.archive import ReadStats, load_archive_arrays
    from s2m_retrieval.data.classes import CLASS_NAMES
    from s2m_retrieval.networks.segmenter import SegmenterConfig
    from s2m_retrieval.training.segmenter import SegTrainConfig, train_segmenter

    if threads:
        torch.set_num_threads(threads)
    stats = ReadStats()
    images, masks, entries = load_archive_arrays(archive, res, with_masks=True, limit=limit, stats=stats)
    typer.echo(f"training on {len(entries)} images with masks from {archive}"
               + (f" ({stats.n_bad} skipped: no mask or unreadable)" if stats.n_bad else ""))
    curves = out.parent / f"{out.stem}_curves"
    with tqdm(total=steps, unit="step", desc="train segmenter", disable=None) as bar:
        def progress(step, total, loss):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        metrics = train_segmenter(images, masks, SegTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed),
                                  SegmenterConfig(img_resolution=res), out_path=out, device=_device(device),
                                  progress=progress, curves_dir=curves)
    for k, d in enumerate(metrics["dice"]):
        typer.echo(f"  DICE {CLASS_NAMES.get(k, k):32s} {'n/a' if d is None else f'{d:.3f}'}")
    typer.echo(f"held-out mean DICE (without background): {metrics['mean_dice']:.3f} "
               f"on {metrics['n_val']} images; wrote {out}")
    _curves_note(curves)


# --- Sketch2MedI networks (E + D_latent, H, inverter) and the pix2pix baseline --------------------------------

SOURCE_HELP = ("Archive folder (its masks/ when every image has one, else the segmenter's label maps), or "
               "phantom:N[:SEED] for phantoms 0..N-1 of that seed made on the fly (SEED also seeds the sketches; "
               "default 0, as `s2m data phantom --seed 0`).")
GENERATOR = typer.Option(None, "--generator", help="Frozen generator G checkpoint (default: the shipped one).")
STEPS_HELP = "Total optimizer steps; rerun with more to continue from latest.pt."
PAIRS_PER_IMAGE = typer.Option(4, "--pairs-per-image", help="Free-hand sketch variants drawn per image.")
PAIRS_CACHE = typer.Option(None, "--pairs-cache",
                           help="File for the drawn pairs (default OUT/pairs.pt); share one between runs to draw once.")
LIMIT = typer.Option(None, "--limit", min=1, help="Use only the first N images.")
PERCEPTUAL = typer.Option("seg", "--perceptual", help="Perceptual loss: seg (offline), lpips-alex, lpips-vgg.")
SEGMENTER = typer.Option(None, "--segmenter",
                         help="Segmenter for the seg loss and for archives without masks (default: the shipped one).")
SNAPSHOT_EVERY = typer.Option(500, "--snapshot-every", help="Steps between resume snapshots and sample grids.")
THREADS = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default).")
DEVICE = typer.Option("auto", "--device", help=DEVICE_HELP)
FRESH = typer.Option(False, "--fresh", help="Ignore an existing latest.pt and start over.")
# The baselines (pix2pix, embedding) train on E's pairs at E's resolution.
PAIR_RES = typer.Option(64, "--res", help="Resolution: the generator's, to compare with E on the same pairs.")
PAIR_SEGMENTER = typer.Option(None, "--segmenter", help="Segmenter for archives without masks.")
# Hidden: tiny network configs for tests and experiments, e.g. '{"encoder": {"widths": [8, 16, 16, 16]}}'.
CONFIG_JSON = typer.Option(None, "--config-json", hidden=True,
                           help="JSON object of config overrides per part (encoder, discriminator, refiner, "
                                "pix2pix, train).")


# The options the training commands share, by parameter name: a command lists the ones it takes as keyword-only
# parameters without defaults (`*, limit, threads, ...`) and `@_shared_options` gives them these.
SHARED_OPTIONS = {"pairs_per_image": (int, PAIRS_PER_IMAGE), "pairs_cache": (Path, PAIRS_CACHE), "limit": (int, LIMIT),
                  "snapshot_every": (int, SNAPSHOT_EVERY), "threads": (int, THREADS), "device": (str, DEVICE),
                  "fresh": (bool, FRESH), "config_json": (str, CONFIG_JSON)}

_shared_options = shared_options(SHARED_OPTIONS)


def _setup(threads: int, device: str) -> str:
    from cli.runtime import setup_torch

    return setup_torch(threads, device)


def _overrides(config_json: str | None, parts: set[str]) -> dict[str, dict]:
    """The --config-json object: {part: {field: value}} for the parts a command knows."""
    import json

    from s2m_retrieval.errors import BadInputError

    if not config_json:
        return {}
    try:
        data = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--config-json is not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or set(data) - parts or not all(isinstance(v, dict) for v in data.values()):
        raise BadInputError(f"--config-json must be an object with parts among {sorted(parts)}, each an object")
    return {k: {f: tuple(v) if isinstance(v, list) else v for f, v in fields.items()} for k, fields in data.items()}


def _replace(config, fields: dict):
    """A copy of a frozen config with --config-json fields; unknown fields are a one-line error."""
    import dataclasses

    from s2m_retrieval.errors import BadInputError

    try:
        return dataclasses.replace(config, **fields)
    except TypeError as exc:
        raise BadInputError(f"--config-json: {exc}") from None


def _weights(path: Path | None, name: str) -> Path:
    """The given checkpoint, else the shipped one; a missing file is a one-line error naming the option."""
    from s2m_retrieval.model.files import weights_or_shipped

    return weights_or_shipped(path, name)


def _load_g(path: Path | None, device: str):
    from s2m_retrieval.networks.stylegan2 import load_generator

    return load_generator(_weights(path, "generator"), device).requires_grad_(False)


def _metric(name: str, segmenter: Path | None, device: str):
    from s2m_retrieval.model.perceptual import load_perceptual

    return load_perceptual(name, device, checkpoint=segmenter if name == "seg" else None)


def _source_key(archive: str, size: int, variants: int | None, limit: int | None, segmenter: Path | None = None):
    """The data key of the source (pair_source.source_key): a bad source is an error before anything is drawn."""
    from s2m_retrieval.training.pair_source import source_key

    return source_key(archive, size, variants=variants, limit=limit, segmenter=segmenter)


def _start(kind: str, out: Path, tc, fresh: bool, key: dict | None) -> int | None:
    """Check --out and its latest.pt before anything is drawn or written (`key`: the source's data key, None where
    the trainer judges the data itself): the step the run goes on from (0: a new run), or None when it is past
    --steps already (said; its files are kept)."""
    from s2m_retrieval.training.latent import data_record, resume_step, run_record

    start = resume_step(out, kind, run_record(tc, None if key is None else data_record(key, {})), resume=not fresh)
    if start > tc.steps:
        typer.echo(f"{out} is at step {start} already, past --steps {tc.steps}: nothing to train, its files are kept "
                   f"(rerun with --steps above {start} to continue it, or --fresh or a new --out for a shorter run)")
        return None
    return start


def _start_with_pairs(kind: str, out: Path, tc, fresh: bool, archive: str, size: int, variants: int,
                      limit: int | None, segmenter: Path | None, cache: Path | None) -> tuple[int, PairSet] | None:
    """`_start` judged on the source's key, then `_pairs` of that same source: (the step the run goes on from, the
    pairs), or None when the run is past --steps already."""
    start = _start(kind, out, tc, fresh, _source_key(archive, size, variants, limit, segmenter))
    if start is None:
        return None
    return start, _pairs(archive, size, variants, limit, segmenter, out, cache, fresh)


def _pairs(archive: str, size: int, variants: int, limit: int | None, segmenter: Path | None, out: Path,
           cache: Path | None, fresh: bool):
    from tqdm import tqdm

    from s2m_retrieval.training.pair_source import PAIR_CACHE, source_pairs

    with tqdm(unit="img", desc="draw sketches", disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        # --fresh starts the run over: its own pairs.pt of other pairs is drawn again, a --pairs-cache file never.
        pairs = source_pairs(archive, size, variants=variants, limit=limit, segmenter=segmenter,
                             cache=cache or out / PAIR_CACHE, progress=progress, replace=fresh and cache is None)
    typer.echo(f"{len(pairs)} images x {pairs.sketches.shape[1]} sketch variants at {size} px from {archive}")
    return pairs


def _progress(desc: str, out: Path, total: int, start: int):
    """A tqdm bar (off when not a terminal) from the resumed step `start`, and a note of the resume: both begin at
    the first report, when the trainer has accepted latest.pt."""
    from tqdm import tqdm

    from s2m_retrieval.training.latent import STATE_FILE

    last = {"start": start, "total": total}
    bar, log_every = None, 0

    def report(p) -> None:
        nonlocal bar, log_every
        if bar is None:
            if start:
                typer.echo(f"resuming {out / STATE_FILE} at step {start} of {total}")
            bar = tqdm(total=total, initial=min(start, total), unit="step", desc=desc, disable=None,
                       dynamic_ncols=True)
            # Without a terminal (a log file, a batch job) the bar is off: a plain line every 5% shows progress.
            log_every = max(1, total // 20) if bar.disable else 0
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        last.update(step=p.step, loss=p.loss, sec=p.sec_per_step)
        if log_every and (p.step % log_every == 0 or p.step >= p.total_steps):
            typer.echo(f"{desc}: step {p.step}/{p.total_steps} loss {p.loss:.4f} ({p.sec_per_step:.2f} s/step)",
                       err=True)
        if p.step >= p.total_steps:
            bar.close()

    return report, last


def _done(name: str, path: Path, out: Path, last: dict) -> None:
    if "step" in last:
        typer.echo(f"step {last['step']}: loss {last['loss']:.4f} ({last['sec']:.2f} s/step)")
    elif last["start"]:
        typer.echo(f"{out} was at step {last['start']} of {last['total']} already: nothing left to train")
    typer.echo(f"{name}: {path}")
    typer.echo(f"resume state: {out / 'latest.pt'} (rerun with a larger --steps to continue); "
               f"sample grids: {out / 'samples'}/")
    _curves_note(out)


def _curves_note(run_dir: Path) -> None:
    typer.echo(f"training curves: {run_dir / 'curves.png'}, {run_dir / 'tb'}/ (tensorboard --logdir {run_dir})")


@app.command("encoder")
@_shared_options
def encoder(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, pairs.pt, samples/, encoder.pt "
                                                 "(+ latent_discriminator.pt with --adv)."),
    generator: Path = GENERATOR,
    steps: int = typer.Option(10000, "--steps", help=STEPS_HELP),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate of E."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    adv: bool = typer.Option(True, "--adv/--no-adv", help="With the latent discriminator D (e4e), or E alone."),
    perceptual: str = PERCEPTUAL,
    segmenter: Path = SEGMENTER,
    objective: str = typer.Option("image", "--objective",
                                  help="image: reconstruct the paired image (L2 + perceptual + latent D); index: "
                                       "land on the paired image's stored index vector (distillation + InfoNCE "
                                       "against a bank of the archive's inverter codes)."),
    init: Path = typer.Option(None, "--init", help="Start E from this encoder checkpoint ('shipped': the "
                                                   "package's); --objective index only."),
    inverter_path: Path = typer.Option(None, "--inverter", help="Inverter whose codes the index stores (default: "
                                                                "the shipped one); --objective index only."),
    bank: Path = typer.Option(None, "--bank", help="Code bank cache (default OUT/code_bank.pt), keyed by the "
                                                   "inverter's version; --objective index only."),
    projector_path: Path = typer.Option(None, "--projector", help="Train in this projector's retrieval space "
                                        "('shipped': the package's), its query head beside E; writes OUT/projector.pt "
                                        "too. --objective index only."),
    *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the sketch encoder E (and D_latent) against frozen G; rerun to resume. `--objective index` trains
    E for the index space instead: its code pulled onto the stored vector of the sketched image and pushed
    from the other images' (a bank of the archive's inverter codes), plus a light image loss."""
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.training.encoder import EncoderTrainConfig, train_encoder

    dev = _setup(threads, device)
    if objective not in ("image", "index"):
        raise typer.BadParameter(f"--objective must be image or index, got {objective!r}")
    if objective != "index" and projector_path is not None:
        raise typer.BadParameter("--projector trains in a projector's space: it needs --objective index")
    parts = _overrides(config_json, {"encoder", "discriminator", "train"})
    G = _load_g(generator, dev)
    if objective == "index":
        _train_index_encoder(archive, out, G, steps, batch, lr, seed, init, inverter_path, bank, pairs_per_image,
                             pairs_cache, limit, perceptual, segmenter, snapshot_every, dev, fresh, parts,
                             projector_path)
        return
    enc_cfg = _replace(encoder_config_for(G.config, in_channels=1), parts.get("encoder", {}))
    d_cfg = _replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), parts.get("discriminator", {}))
    tc = _replace(EncoderTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, adv=0.1 if adv else 0.0,
                                     perceptual=perceptual, snapshot_every=snapshot_every,
                                     sample_every=snapshot_every), parts.get("train", {}))
    begun = _start_with_pairs("encoder", out, tc, fresh, archive, G.config.img_resolution, pairs_per_image, limit,
                              segmenter, pairs_cache)
    if begun is None:
        return
    start, pairs = begun
    report, last = _progress("train encoder", out, tc.steps, start)
    path = train_encoder(pairs, G, out, enc_cfg, d_cfg, tc, _metric(perceptual, segmenter, dev), dev,
                         resume=not fresh, progress=report)
    _done("encoder", path, out, last)


def _train_index_encoder(archive, out, G, steps, batch, lr, seed, init, inverter_path, bank_path, pairs_per_image,
                         pairs_cache, limit, perceptual, segmenter, snapshot_every, dev, fresh, parts,
                         projector_path=None) -> None:
    from tqdm import tqdm

    from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
    from s2m_retrieval.networks.encoders import Encoder, encoder_config_for
    from s2m_retrieval.training.index_space import (BANK_FILE, IndexEncoderTrainConfig, cached_code_bank,
                                                    train_index_encoder)
    from s2m_retrieval.training.sketch2medi import load_encoder, load_inverter

    projector, projector_meta, tau = None, None, 0.0
    if projector_path is not None:
        from s2m_retrieval.networks.projector import load_projector

        p_payload = load_checkpoint(_weights(None if str(projector_path) == "shipped" else projector_path,
                                             "projector"), kind="projector")
        projector, projector_meta = load_projector(p_payload, dev), dict(p_payload.get("meta", {}))
        # d^2 = 2 - 2 cos on the unit sphere: -d^2 / (2 tau) are P's own training logits, up to a constant
        tau = 2 * float(projector_meta.get("train_config", {}).get("tau", 0.05))
    tc = _replace(IndexEncoderTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, perceptual=perceptual,
                                          snapshot_every=snapshot_every, sample_every=snapshot_every, tau=tau),
                  parts.get("train", {}))
    begun = _start_with_pairs("index_encoder", out, tc, fresh, archive, G.config.img_resolution, pairs_per_image, limit,
                              segmenter, pairs_cache)
    if begun is None:
        return
    start, pairs = begun
    inverter = load_inverter(_weights(inverter_path, "inverter"), dev)
    with tqdm(unit="img", desc="invert the bank", disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        bank = cached_code_bank(bank_path or out / BANK_FILE, pairs.images, inverter, G,
                                source=f"{archive}|limit={limit}", replace=bank_path is None, device=dev,
                                progress=progress)
    typer.echo(f"code bank: {bank.num_images} images + mirrors, {bank.vectors.shape[1]}-d, "
               f"inverter {bank.info['inverter_version']}")
    if init is not None:
        payload = load_checkpoint(_weights(None if str(init) == "shipped" else init, "encoder"), kind="encoder")
        E, init_version = load_encoder(payload, dev), version_hash(payload)
    else:
        E, init_version = Encoder(_replace(encoder_config_for(G.config, in_channels=1), parts.get("encoder", {}))), None
        E.w_avg.copy_(G.w_avg)
    if projector_meta is not None and projector_meta.get("encoder_version") != init_version:
        raise typer.BadParameter(f"the projector was trained on encoder {projector_meta.get('encoder_version')}, "
                                 f"--init is {init_version}: start E from the encoder the projector was trained on")
    report, last = _progress("train encoder (index space)", out, tc.steps, start)
    path = train_index_encoder(pairs, bank, E, G, out, tc, perceptual=_metric(perceptual, segmenter, dev)
                               if tc.image_every else None, device=dev, resume=not fresh,
                               init_version=init_version, progress=report, projector=projector,
                               projector_meta=projector_meta)
    _done("encoder", path, out, last)
    if projector is not None:
        typer.echo(f"projector (query head fine-tuned with E): {out / 'projector.pt'}")


@app.command("projector")
@_shared_options
def projector(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, code_bank.pt, sketch_codes.pt, projector.pt."),
    generator: Path = GENERATOR,
    encoder_path: Path = typer.Option(None, "--encoder", help="The sketch encoder E whose codes the projector "
                                                              "reads (default: the shipped one)."),
    inverter_path: Path = typer.Option(None, "--inverter", help="The inverter whose codes the index stores "
                                                                "(default: the shipped one)."),
    bank: Path = typer.Option(None, "--bank", help="Code bank cache (default OUT/code_bank.pt; the one of "
                                                   "`train encoder --objective index` on the same source fits)."),
    steps: int = typer.Option(3000, "--steps", help=STEPS_HELP),
    batch: int = typer.Option(512, "--batch", help="Batch size (the other pairs of a batch are the negatives)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine decay to 0)."),
    dim: int = typer.Option(256, "--dim", help="Size of the retrieval space (the index's vector length)."),
    hidden: int = typer.Option(0, "--hidden", help="0: linear heads; N: one hidden layer of N units."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    segmenter: Path = PAIR_SEGMENTER,
    *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the retrieval-space projector P: E frozen, two heads fitted so that E's code of a sketch and the
    stored code of the sketched image meet on one unit sphere (InfoNCE, stored look-alikes in the batches).
    A bundle with projector.pt builds its indexes in that space."""
    from tqdm import tqdm

    from s2m_retrieval.networks.checkpoint import load_checkpoint, version_hash
    from s2m_retrieval.model.latent_space import DEFAULT_WEIGHTING
    from s2m_retrieval.networks.projector import ProjectorConfig
    from s2m_retrieval.training.index_space import BANK_FILE, cached_code_bank
    from s2m_retrieval.training.projector import CODES_FILE, ProjectorTrainConfig, cached_code_table, train_projector
    from s2m_retrieval.training.sketch2medi import load_encoder, load_inverter

    dev = _setup(threads, device)
    parts = _overrides(config_json, {"projector", "train"})
    tc = _replace(ProjectorTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, snapshot_every=snapshot_every,
                                       sample_every=snapshot_every), parts.get("train", {}))
    G = _load_g(generator, dev)
    start = _start("projector", out, tc, fresh, None)  # its trainer judges the code table it is handed
    if start is None:
        return
    pairs = _pairs(archive, G.config.img_resolution, pairs_per_image, limit, segmenter, out, pairs_cache, fresh)
    payloads = {name: load_checkpoint(_weights(path, name), kind=name)
                for name, path in (("encoder", encoder_path), ("inverter", inverter_path))}
    E, inverter = load_encoder(payloads["encoder"], dev), load_inverter(payloads["inverter"], dev)
    weighting = DEFAULT_WEIGHTING

    def bar(desc: str):
        return tqdm(unit="img", desc=desc, disable=None, leave=False)

    def follow(b):
        def progress(done: int, total: int) -> None:
            b.total = total
            b.update(done - b.n)
        return progress

    with bar("invert the bank") as b:
        code_bank = cached_code_bank(bank or out / BANK_FILE, pairs.images, inverter, G, weighting,
                                     source=f"{archive}|limit={limit}", replace=bank is None, device=dev,
                                     progress=follow(b))
    with bar("encode the sketches") as b:
        codes = cached_code_table(out / CODES_FILE, pairs, E, weighting, tc.shift, tc.seed, device=dev,
                                  progress=follow(b))
    typer.echo(f"code bank: {code_bank.num_images} images + mirrors; sketch codes: {tuple(codes.shape[:3])}, "
               f"{codes.shape[3]}-d")
    config = _replace(ProjectorConfig(in_dim=codes.shape[3], weighting=weighting.spec(), dim=dim, hidden=hidden),
                      parts.get("projector", {}))
    meta = {"generator_version": version_hash(load_checkpoint(_weights(generator, "generator"), kind="generator")),
            "encoder_version": version_hash(payloads["encoder"]),
            "inverter_version": version_hash(payloads["inverter"]),
            "data": {**pairs.info, "num_pairs": len(pairs)}}
    report, last = _progress("train projector", out, tc.steps, start)
    path = train_projector(codes, code_bank, out, config, tc, meta, dev, resume=not fresh, progress=report)
    _done("projector", path, out, last)


@app.command("refiner")
@_shared_options
def refiner(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, pairs.pt, samples/, refiner.pt."),
    generator: Path = GENERATOR,
    encoder: Path = typer.Option(None, "--encoder", help="Frozen sketch encoder E (default: the shipped one)."),
    steps: int = typer.Option(5000, "--steps", help=STEPS_HELP),
    refine_steps: int = typer.Option(3, "--refine-steps", help="Refinement steps T per training batch."),
    batch: int = typer.Option(8, "--batch", help="Batch size."),
    lr: float = typer.Option(3e-4, "--lr", help="Adam learning rate of H."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    perceptual: str = PERCEPTUAL,
    segmenter: Path = SEGMENTER,
    init: Path = typer.Option(None, "--init", help="Fine-tune this refiner checkpoint ('shipped': the package's) "
                                                   "instead of starting fresh, e.g. after E was retrained."),
    *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the refiner H with G and E frozen; rerun to resume."""
    from s2m_retrieval.networks.refiner import refiner_config_for
    from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner
    from s2m_retrieval.training.sketch2medi import load_encoder, load_refiner

    dev = _setup(threads, device)
    parts = _overrides(config_json, {"refiner", "train"})
    init_h = None if init is None else load_refiner(_weights(None if str(init) == "shipped" else init, "refiner"), dev)
    G = _load_g(generator, dev)
    E = load_encoder(_weights(encoder, "encoder"), dev)
    cfg = _replace(refiner_config_for(G), parts.get("refiner", {}))
    tc = _replace(RefinerTrainConfig(steps=steps, batch=batch, lr=lr, refine_steps=refine_steps, seed=seed,
                                     perceptual=perceptual, snapshot_every=snapshot_every,
                                     sample_every=snapshot_every), parts.get("train", {}))
    begun = _start_with_pairs("refiner", out, tc, fresh, archive, G.config.img_resolution, pairs_per_image, limit,
                              segmenter, pairs_cache)
    if begun is None:
        return
    start, pairs = begun
    report, last = _progress("train refiner", out, tc.steps, start)
    path = train_refiner(pairs, G, E, out, cfg, tc, _metric(perceptual, segmenter, dev), dev, resume=not fresh,
                         progress=report, init=init_h)
    _done("refiner", path, out, last)


@app.command("inverter")
@_shared_options
def inverter(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, samples/, inverter.pt "
                                                 "(+ latent_discriminator.pt with --adv)."),
    generator: Path = GENERATOR,
    steps: int = typer.Option(10000, "--steps", help=STEPS_HELP),
    iterations: int = typer.Option(3, "--iterations", help="ReStyle iterations per batch (1: a plain encoder)."),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    adv: bool = typer.Option(True, "--adv/--no-adv", help="Keep codes among G's w's with the latent D (e4e)."),
    perceptual: str = PERCEPTUAL,
    segmenter: Path = SEGMENTER,
    *, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the archive inverter (image -> W+) against frozen G; rerun to resume."""
    from s2m_retrieval.networks.encoders import LatentDiscriminatorConfig, encoder_config_for
    from s2m_retrieval.training.encoder import EncoderTrainConfig
    from s2m_retrieval.training.inverter import train_inverter
    from s2m_retrieval.training.pair_source import source_images

    dev = _setup(threads, device)
    parts = _overrides(config_json, {"encoder", "discriminator", "train"})
    G = _load_g(generator, dev)
    channels = G.config.img_channels
    enc_cfg = _replace(encoder_config_for(G.config, in_channels=channels,
                                          extra_channels=channels if iterations > 1 else 0), parts.get("encoder", {}))
    d_cfg = _replace(LatentDiscriminatorConfig(w_dim=G.config.w_dim), parts.get("discriminator", {}))
    tc = _replace(EncoderTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, adv=0.1 if adv else 0.0,
                                     iterations=iterations, perceptual=perceptual, snapshot_every=snapshot_every,
                                     sample_every=snapshot_every), parts.get("train", {}))
    key = _source_key(archive, G.config.img_resolution, None, limit)
    start = _start("inverter", out, tc, fresh, key)
    if start is None:
        return
    images = source_images(archive, G.config.img_resolution, limit=limit)
    typer.echo(f"{len(images)} images at {G.config.img_resolution} px from {archive}")
    report, last = _progress("train inverter", out, tc.steps, start)
    path = train_inverter(images, G, out, enc_cfg, d_cfg, tc, _metric(perceptual, segmenter, dev), dev,
                          resume=not fresh, progress=report, source=key)
    _done("inverter", path, out, last)


@app.command("pix2pix")
@_shared_options
def pix2pix(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, pairs.pt, samples/, pix2pix.pt."),
    res: int = PAIR_RES,
    steps: int = typer.Option(10000, "--steps", help=STEPS_HELP),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate (beta1 0.5), G and D."),
    l1: float = typer.Option(100.0, "--l1", help="Weight of the L1 term (pix2pix's lambda)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    segmenter: Path = PAIR_SEGMENTER,
    *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the pix2pix baseline (U-Net + PatchGAN, L1 + adversarial) on the same pairs as E; rerun to resume."""
    from s2m_retrieval.training.pix2pix import Pix2PixTrainConfig, patch_config_for, pix2pix_config_for, train_pix2pix

    dev = _setup(threads, device)
    parts = _overrides(config_json, {"pix2pix", "discriminator", "train"})
    cfg = _replace(pix2pix_config_for(res), parts.get("pix2pix", {}))
    d_cfg = _replace(patch_config_for(res), parts.get("discriminator", {}))
    tc = _replace(Pix2PixTrainConfig(steps=steps, batch=batch, lr=lr, l1=l1, seed=seed,
                                     snapshot_every=snapshot_every, sample_every=snapshot_every),
                  parts.get("train", {}))
    begun = _start_with_pairs("pix2pix", out, tc, fresh, archive, res, pairs_per_image, limit, segmenter, pairs_cache)
    if begun is None:
        return
    start, pairs = begun
    report, last = _progress("train pix2pix", out, tc.steps, start)
    path = train_pix2pix(pairs, out, cfg, d_cfg, tc, dev, resume=not fresh, progress=report)
    _done("pix2pix", path, out, last)


@app.command("embedding")
@_shared_options
def embedding(
    archive: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder: latest.pt, pairs.pt, embedding.pt."),
    res: int = PAIR_RES,
    steps: int = typer.Option(3000, "--steps", help=STEPS_HELP),
    batch: int = typer.Option(64, "--batch", help="Batch size (the other pairs of a batch are the negatives)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine decay to 0)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    segmenter: Path = PAIR_SEGMENTER,
    bank: Path = typer.Option(None, "--hard-negatives", help="A code bank file of E's index-space training "
                                                              "(OUT/code_bank.pt of `train encoder --objective "
                                                              "index` on the same source): look-alikes share batches."),
    *, pairs_per_image, pairs_cache, limit, snapshot_every, threads, device, fresh, config_json,
) -> None:
    """Train the learned sketch-image embedding baseline (two CNN towers, InfoNCE) on the same pairs as E."""
    from s2m_retrieval.networks.embedding import EmbeddingConfig
    from s2m_retrieval.training.embedding import EmbeddingTrainConfig, train_embedding

    dev = _setup(threads, device)
    parts = _overrides(config_json, {"embedding", "train"})
    cfg = _replace(EmbeddingConfig(img_resolution=res), parts.get("embedding", {}))
    tc = _replace(EmbeddingTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, snapshot_every=snapshot_every,
                                       sample_every=snapshot_every), parts.get("train", {}))
    begun = _start_with_pairs("embedding", out, tc, fresh, archive, res, pairs_per_image, limit, segmenter, pairs_cache)
    if begun is None:
        return
    start, pairs = begun
    report, last = _progress("train embedding", out, tc.steps, start)
    hard = None
    if bank is not None:
        from s2m_retrieval.training.index_space import read_code_bank

        hard = read_code_bank(bank).hard
    path = train_embedding(pairs, out, cfg, tc, dev, resume=not fresh, progress=report, hard=hard)
    _done("embedding", path, out, last)


# The unpaired image-to-image baselines (CycleGAN, UNIT, U-GAT-IT): s2m train cyclegan|unit|ugatit.
from cli.train_unpaired import register as _register_unpaired  # noqa: E402

_register_unpaired(app)
