"""Training data named on the command line: an archive folder or `phantom:N[:seed]`, with a cache of drawn pairs."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from s2m_retrieval.errors import ArchiveError, BadInputError
from s2m_retrieval.training.pairs import DEFAULT_VARIANTS, PairSet, archive_pairs, phantom_pairs

PHANTOM_PREFIX = "phantom:"
PAIR_CACHE = "pairs.pt"


@dataclass(frozen=True)
class PhantomSource:
    """Phantoms 0..n-1 of the phantom archive with `seed`, generated in memory."""

    n: int
    seed: int = 0


def parse_source(spec: str | os.PathLike) -> PhantomSource | Path:
    """`phantom:N[:SEED]` -> PhantomSource; anything else is an archive folder, which must exist."""
    text = os.fspath(spec)
    if text.startswith(PHANTOM_PREFIX):
        parts = text[len(PHANTOM_PREFIX):].split(":")
        try:
            if not 1 <= len(parts) <= 2:
                raise ValueError
            source = PhantomSource(*(int(p) for p in parts))
        except ValueError:
            raise BadInputError(f"bad phantom source {text!r}: write phantom:N or phantom:N:SEED") from None
        if source.n < 1:
            raise BadInputError(f"phantom source {text!r} needs N >= 1")
        return source
    path = Path(text)
    if not path.is_dir():
        raise ArchiveError(f"archive folder not found: {path} (or write phantom:N[:SEED] for phantoms)")
    return path


def _check_phantom_size(size: int) -> None:
    from s2m_retrieval.data.phantom import SUPPORTED_SIZES

    if size not in SUPPORTED_SIZES:
        raise BadInputError(f"phantoms come at {SUPPORTED_SIZES} px, not {size}; write an archive at that size")


def _archive_stamp(root: Path, limit: int | None) -> str:
    """A hash of the archive's file names, sizes and times: a changed archive invalidates the pair cache."""
    from s2m_retrieval.data.archive import scan_archive

    h = hashlib.sha256()
    for entry in scan_archive(root)[:limit]:
        for path in (entry.path, entry.mask_path):
            if path is not None:
                st = os.stat(path)
                h.update(f"{entry.rel}|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cache_key(source: PhantomSource | Path, size: int, variants: int, limit: int | None,
               segmenter: str | os.PathLike | None, policy: str) -> str:
    if isinstance(source, PhantomSource):
        what = {"phantom": [source.n, source.seed]}
    else:
        what = {"archive": str(source.resolve()), "stamp": _archive_stamp(source, limit), "limit": limit,
                "segmenter": None if segmenter is None else os.fspath(segmenter), "fit": policy}
    from s2m_retrieval.training.pairs import SKETCH_RECIPE

    return json.dumps({**what, "size": size, "variants": variants, "recipe": SKETCH_RECIPE}, sort_keys=True)


def source_pairs(spec: str | os.PathLike, size: int, *, variants: int = DEFAULT_VARIANTS, limit: int | None = None,
                 segmenter: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                 progress: Callable[[int, int], None] | None = None, policy: str = "crop") -> PairSet:
    """(sketch, image) pairs at `size` from a source spec (archive images squared by `policy`: crop or pad);
    drawn once and kept in the `cache` file when given."""
    # Drawing costs ~40 ms per sketch: thousands of images take minutes, which a resumed run should not repeat.
    source = parse_source(spec)
    key = _cache_key(source, size, variants, limit, segmenter, policy)
    cache = None if cache is None else Path(cache)
    if cache is not None and cache.is_file():
        try:
            stored = torch.load(cache, map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                return PairSet(stored["images"], stored["sketches"], json.loads(stored["info"]))
        except Exception:  # a damaged cache is only lost time: draw the pairs again
            pass
    if isinstance(source, PhantomSource):
        _check_phantom_size(size)
        pairs = phantom_pairs(min(source.n, limit or source.n), size, seed=source.seed, variants=variants,
                              progress=progress)
    else:
        pairs = archive_pairs(source, size, variants=variants, limit=limit, segmenter=segmenter, progress=progress,
                              policy=policy)
    if cache is not None:
        from s2m_retrieval.training.state import atomic_save

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"key": key, "images": pairs.images, "sketches": pairs.sketches,
                      "info": json.dumps(pairs.info)}, cache)
    return pairs


def source_images(spec: str | os.PathLike, size: int, *, limit: int | None = None, policy: str = "crop") -> torch.Tensor:
    """The source's images alone, uint8 [N, 3, size, size] (the inverter needs no sketches)."""
    source = parse_source(spec)
    if isinstance(source, PhantomSource):
        import numpy as np

        from s2m_retrieval.data.phantom import make_phantom

        _check_phantom_size(size)
        images = np.stack([make_phantom(source.seed, i, size)[0] for i in range(min(source.n, limit or source.n))])
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    from s2m_retrieval.data.archive import load_archive_arrays

    images, _, _ = load_archive_arrays(source, size, limit=limit, policy=policy)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
