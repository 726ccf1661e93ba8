"""Model bundles: a folder with every network's checkpoint and a manifest (bundle.json); bundle names resolved."""

from __future__ import annotations

import json
import os
from pathlib import Path

from index.atomic import write_json
from s2m_retrieval.networks.checkpoint import load_checkpoint, shipped_weights, version_hash
from s2m_retrieval.errors import BadInputError, CheckpointError

MANIFEST = "bundle.json"
FORMAT = "s2m-bundle/1"
SHIPPED_NAME = "phantom"
BUNDLES_DIR = "models"  # HOME/models/NAME: bundles known by name
# Every network a bundle can hold, in training order; what each is needed for.
NETWORKS = {
    "segmenter": "sketches of archives without masks, the seg perceptual metric, DICE",
    "generator": "everything",
    "encoder": "sketch queries",
    "latent_discriminator": "nothing at query time (kept to continue training the encoder)",
    "refiner": "refinement steps of sketch queries (optional)",
    "inverter": "indexing an archive",
    "projector": "the retrieval space of indexes built with the bundle (optional: without it, weighted W+)",
}
# Checkpoint meta keys worth showing in a manifest (the rest stay in the checkpoint).
_TRAINED_KEYS = ("step", "kimg", "seed", "num_images", "mean_dice", "n_train", "n_val", "perceptual",
                 "generator_version", "encoder_version", "inverter_version", "with_latent_discriminator", "train_config")


def shipped_folder() -> Path:
    """The package's weights folder: the shipped phantom bundle."""
    return shipped_weights(SHIPPED_NAME).parent


def bundles_home(home: str | os.PathLike | None = None) -> Path:
    """HOME/models, where bundles are found by name (HOME: --home, $S2M_HOME, ~/.s2m)."""
    from s2m_retrieval.storage.db import resolve_home

    return resolve_home(home) / BUNDLES_DIR


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith((".", "~")) or (os.altsep is not None and os.altsep in spec)


def resolve_model(spec: str | os.PathLike | None, home: str | os.PathLike | None = None) -> Path:
    """The folder of `--model NAME_OR_PATH`: None or 'phantom' is the shipped bundle, a bare name one under
    HOME/models (else a folder of that name here), anything with a slash a folder."""
    if spec is None or os.fspath(spec) == SHIPPED_NAME:
        return shipped_folder()
    text = os.fspath(spec)
    if text and is_shipped(text):  # the shipped folder itself (it names its own missing networks)
        return shipped_folder()
    if not text:
        raise BadInputError("the model bundle is empty (--model, or models= in Python): give a bundle name "
                            "(see `s2m models list`) or a folder")
    named = bundles_home(home) / text
    if not _looks_like_path(text) and named.is_dir():
        return named
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if _looks_like_path(text):
        raise CheckpointError(f"model bundle folder not found: {folder}")
    known = ", ".join(b["name"] for b in list_bundles(home))
    raise CheckpointError(f"no model bundle named {text!r} (known: {known}); give a folder path, or train one with "
                          f"`s2m train all ARCHIVE --out {bundles_home(home) / text}`")


def is_shipped(folder: str | os.PathLike) -> bool:
    """Whether `folder` is the shipped bundle."""
    return Path(folder).resolve() == shipped_folder().resolve()


def network_files(folder: str | os.PathLike) -> dict[str, Path | None]:
    """Checkpoint path per network of a bundle folder (None where absent)."""
    folder = Path(folder)
    return {name: (folder / f"{name}.pt") if (folder / f"{name}.pt").is_file() else None for name in NETWORKS}


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """A bundle's manifest, or None when it has none; a damaged one is a CheckpointError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"bundle manifest {path} is unreadable ({type(exc).__name__}); "
                              f"rewrite it with `s2m models manifest {Path(folder)}`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an {FORMAT} manifest; rewrite it with `s2m models manifest {folder}`")
    return manifest


def bundle_name(folder: str | os.PathLike) -> str:
    """The name a bundle goes by: its manifest's, else 'phantom' for the shipped one, else its folder's."""
    if is_shipped(folder):
        return SHIPPED_NAME
    try:
        manifest = read_manifest(folder)
    except CheckpointError:
        manifest = None
    return (manifest or {}).get("name") or Path(folder).resolve().name


def training_fit(folder: str | os.PathLike) -> str:
    """How the bundle's training squared archive images (crop or pad): index builds with it do the same."""
    try:
        manifest = read_manifest(folder) or {}
    except CheckpointError:
        manifest = {}
    return manifest.get("archive", {}).get("fit", "crop")


def network_record(path: Path, kind: str) -> dict:
    """What the manifest says about one checkpoint: its version hash, config and how it was trained."""
    payload = load_checkpoint(path, kind=kind)
    meta = payload.get("meta") or {}
    return {"file": path.name, "version": version_hash(payload), "config": payload["config"],
            "trained": {k: meta[k] for k in _TRAINED_KEYS if k in meta}}


def build_manifest(folder: str | os.PathLike, name: str | None = None, previous: dict | None = None,
                   **sections) -> dict:
    """The manifest of a bundle folder as it is now; `sections` (archive, training, metrics, ...) replace those
    of `previous`, whose other sections are kept. No clock time: the same weights give the same manifest."""
    folder = Path(folder)
    previous = previous or {}
    files = network_files(folder)
    manifest = {"format": FORMAT,
                "name": name or previous.get("name") or (SHIPPED_NAME if is_shipped(folder) else folder.resolve().name),
                "networks": {n: network_record(p, n) for n, p in files.items() if p is not None},
                "missing": [n for n, p in files.items() if p is None]}
    for key, value in previous.items():
        if key not in manifest:
            manifest[key] = value
    for key, value in sections.items():
        if value is not None:
            manifest[key] = value
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Write bundle.json atomically (temp file + rename)."""
    folder = Path(folder)
    path = folder / MANIFEST
    write_json(path, manifest, indent=2, sort_keys=True)
    return path


def refresh_manifest(folder: str | os.PathLike, name: str | None = None, **sections) -> Path:
    """Rewrite a bundle's manifest from the checkpoints it holds now (e.g. after new weights were placed in it),
    keeping what the old manifest said about training data and metrics unless `sections` replace it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model bundle folder not found: {folder}")
    if not any(network_files(folder).values()):
        raise CheckpointError(f"{folder} holds none of {', '.join(f'{n}.pt' for n in NETWORKS)}: not a model bundle")
    return write_manifest(folder, build_manifest(folder, name, read_manifest(folder), **sections))


def stale_networks(folder: str | os.PathLike, manifest: dict) -> list[str]:
    """Networks whose checkpoint on disk differs from the manifest (added, removed or retrained since)."""
    files = network_files(folder)
    recorded = manifest.get("networks", {})
    stale = []
    for name, path in files.items():
        if (path is None) != (name not in recorded):
            stale.append(name)
        elif path is not None and version_hash(load_checkpoint(path, kind=name)) != recorded[name]["version"]:
            stale.append(name)
    return stale


def describe(folder: str | os.PathLike) -> dict:
    """A bundle for `s2m models show`: what its folder holds now (a manifest's record only for a network whose
    file is there), where it is, what is stale."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    stale = stale_networks(folder, manifest) if manifest is not None else []
    if manifest is None:
        manifest = build_manifest(folder)
    else:
        files, recorded = network_files(folder), manifest.get("networks", {})
        manifest = {**manifest, "missing": [n for n, p in files.items() if p is None],
                    "networks": {n: recorded[n] if n in recorded else network_record(p, n)
                                 for n, p in files.items() if p is not None}}
    return {**manifest, "path": str(folder), "manifest_file": (folder / MANIFEST).is_file(), "stale": stale}


def list_bundles(home: str | os.PathLike | None = None) -> list[dict]:
    """The shipped bundle, then every bundle under HOME/models: name, path and networks present."""
    folders = [shipped_folder()]
    root = bundles_home(home)
    if root.is_dir():
        folders += sorted(p for p in root.iterdir() if p.is_dir() and any(network_files(p).values()))
    out = []
    for folder in folders:
        files = network_files(folder)
        out.append({"name": SHIPPED_NAME if is_shipped(folder) else folder.name, "path": str(folder),
                    "networks": [n for n, p in files.items() if p is not None],
                    "missing": [n for n, p in files.items() if p is None]})
    return out


def bundles_with(versions: dict[str, str], home: str | os.PathLike | None = None) -> list[str]:
    """Names of known bundles whose manifests record these network versions (e.g. what built an index)."""
    names = []
    for entry in list_bundles(home):
        try:
            manifest = read_manifest(entry["path"])
        except CheckpointError:
            continue
        recorded = {k: v.get("version") for k, v in (manifest or {}).get("networks", {}).items()}
        if all(recorded.get(k) == v for k, v in versions.items()):
            names.append(entry["name"])
    return names
