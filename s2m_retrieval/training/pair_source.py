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


def check_limit(limit: int | None) -> None:
    """A limit is a count of images: None (all of them) or >= 1."""
    if limit is not None and limit < 1:
        raise BadInputError(f"limit must be >= 1 (none: every image), got {limit}")


def source_key(spec: str | os.PathLike, size: int, *, variants: int | None = None, limit: int | None = None,
               segmenter: str | os.PathLike | None = None, policy: str = "crop") -> dict:
    """What names a source's training data at `size`: the pairs cache's key, and what latest.pt records of a run's
    data (`variants` None: the images alone, no sketches drawn). Cheap: nothing is read but the archive's listing."""
    check_limit(limit)
    source = parse_source(spec)
    if isinstance(source, PhantomSource):
        # A limit of N or more takes every phantom: the same data as none.
        key = {"source": f"{PHANTOM_PREFIX}{source.n}:{source.seed}",
               "limit": limit if limit is not None and limit < source.n else None}
    else:
        key = {"source": str(source.resolve()), "stamp": _archive_stamp(source, limit), "limit": limit, "fit": policy}
        if variants is not None:
            key["segmenter"] = None if segmenter is None else str(Path(segmenter).resolve())
    key["size"] = size
    if variants is not None:
        from s2m_retrieval.training.pairs import SKETCH_RECIPE

        key.update(variants=variants, recipe=SKETCH_RECIPE)
    return key


# A key's fields whose names in messages differ from their own.
KEY_LABELS = {"stamp": "archive files' stamp", "variants": "pairs per image", "recipe": "sketch recipe"}


def _stored_key(text: str) -> dict:
    """A cache's key in today's form: caches written before keyed the source as phantom: [N, SEED] or archive: PATH
    and kept a segmenter as given."""
    key = json.loads(text)
    if "phantom" in key:
        n, seed = key.pop("phantom")
        key["source"] = f"{PHANTOM_PREFIX}{n}:{seed}"
    if "archive" in key:
        key["source"] = key.pop("archive")
    if key.get("segmenter"):
        key["segmenter"] = str(Path(key["segmenter"]).resolve())
    return key


def _read_cache(path: Path, key: dict, count: int | None, replace: bool) -> PairSet | None:
    """The pairs a cache file holds for `key` (`count` images, when known); None when there is none to use.
    A file that is no pairs cache is refused, so is one of other pairs unless `replace` (drawn again over it)."""
    from s2m_retrieval.training.state import describe_changes

    if path.is_dir():
        raise BadInputError(f"the pairs cache {path} is a folder; give a file, e.g. {path / PAIR_CACHE} "
                            "(--pairs-cache, or cache= in Python)")
    if not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        before = _stored_key(stored["key"])
        info = json.loads(stored["info"])
        images, sketches = stored["images"], stored["sketches"]
    except OSError:
        raise
    except Exception:  # torch raises many types for a file of another kind; a dict without our entries fails too
        raise BadInputError(f"{path} is not a pairs cache; give another path for the drawn pairs (--pairs-cache, "
                            "or cache= in Python)") from None
    changes = describe_changes(before, key, KEY_LABELS)
    if not changes and count is not None and len(images) != count:
        # Caches written before phantom keys held the limit: their count tells it.
        changes = f"images {len(images)} -> {count}"
    if not changes:
        return PairSet(images, sketches, info, key=key)
    if replace:
        return None
    raise BadInputError(f"the pairs cache {path} holds pairs drawn with other settings ({changes}); give another "
                        f"path (--pairs-cache, or cache= in Python), or delete {path} to draw them again")


def source_pairs(spec: str | os.PathLike, size: int, *, variants: int = DEFAULT_VARIANTS, limit: int | None = None,
                 segmenter: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                 progress: Callable[[int, int], None] | None = None, policy: str = "crop",
                 replace: bool = False) -> PairSet:
    """(sketch, image) pairs at `size` from a source spec (archive images squared by `policy`: crop or pad);
    drawn once and kept in the `cache` file when given. A cache file of other pairs is refused, naming what
    differs (`replace`: drawn again over it, for a file the caller owns); a file that is no pairs cache always."""
    # Drawing costs ~40 ms per sketch: thousands of images take minutes, which a resumed run should not repeat.
    key = source_key(spec, size, variants=variants, limit=limit, segmenter=segmenter, policy=policy)
    source = parse_source(spec)
    count = min(source.n, limit or source.n) if isinstance(source, PhantomSource) else None
    cache = None if cache is None else Path(cache)
    if cache is not None:
        stored = _read_cache(cache, key, count, replace)
        if stored is not None:
            return stored
    if isinstance(source, PhantomSource):
        _check_phantom_size(size)
        pairs = phantom_pairs(count, size, seed=source.seed, variants=variants, progress=progress)
    else:
        pairs = archive_pairs(source, size, variants=variants, limit=limit, segmenter=segmenter, progress=progress,
                              policy=policy)
    pairs = PairSet(pairs.images, pairs.sketches, pairs.info, key=key)
    if cache is not None:
        from s2m_retrieval.training.state import atomic_save

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"key": json.dumps(key, sort_keys=True), "images": pairs.images, "sketches": pairs.sketches,
                     "info": json.dumps(pairs.info)}, cache)
    return pairs


def source_size(spec: str | os.PathLike, limit: int | None = None) -> int:
    """How many images a source gives at most (an archive's unreadable files are found only when read)."""
    check_limit(limit)
    source = parse_source(spec)
    if isinstance(source, PhantomSource):
        return min(source.n, limit or source.n)
    from s2m_retrieval.data.archive import scan_archive

    return len(scan_archive(source)[:limit])


def source_images(spec: str | os.PathLike, size: int, *, limit: int | None = None, policy: str = "crop") -> torch.Tensor:
    """The source's images alone, uint8 [N, 3, size, size] (the inverter needs no sketches)."""
    check_limit(limit)
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
