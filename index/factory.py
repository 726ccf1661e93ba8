"""FAISS index construction: automatic factory by archive size, training sizes, per-type search parameters.

Automatic choice (`auto_factory`), by the number of vectors expected at the first build:
- fewer than 20,000: "Flat" — exact; a single query scans all vectors (~11 ms at 100k x 512 on one core,
  so ~2 ms at 20k), no training, supports removal.
- 20,000 to 999,999: "IVF{nlist},Flat" with nlist = the power of two nearest 4*sqrt(n), clamped to
  [256, 4096] — exact distances within the probed lists, removal supported, trained on a sample — as long as
  the vectors take at most 2 GiB (IVF-Flat holds them all in RAM: 999,999 x 2,560-d would be ~10 GB; the
  shipped bundle's 256-d vectors stay below up to the 1M threshold).
- 1,000,000 and more, or more than 2 GiB of vectors: "OPQ{m}_{d},IVF{nlist},PQ{m}" (d = min(dim, 256), m = 64/32/16/8 the largest dividing d,
  nlist up to 16384): an OPQ rotation (and reduction to d dims), then m-byte PQ codes, so RAM stays bounded
  (~80 bytes per vector with its id). PQ distances are approximate: searches take `refine` x k candidates and
  re-rank them with the exact vectors kept in the shards (`index/refine.py`); benchmarks/bench_large_index.py
  measures memory and recall@10 against exact search at 1M vectors.
HNSW ("HNSW32") is the fastest to query but cannot remove vectors (a removal rebuilds the graph from the
shards), so it is offered by flag, not chosen automatically.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from s2m_retrieval.errors import BadInputError

log = logging.getLogger(__name__)

FLAT_MAX = 20_000
IVF_FLAT_MAX = 1_000_000
# IVF-Flat keeps every vector in RAM (in the build and in each query process): beyond 2 GiB of them, PQ codes.
IVF_FLAT_MAX_BYTES = 2 << 30
# Upper bound on the training sample (k-means cost grows with it; FAISS subsamples beyond 256 per centroid).
MAX_TRAIN = 200_000
DEFAULT_EF_SEARCH = 64
OPQ_DIM = 256  # dims kept by the OPQ rotation of large indexes (the weighted W+ puts most variance in few)
DEFAULT_REFINE = 10  # candidates per wanted result re-ranked exactly on PQ indexes
# Vectors an OPQ / PCA transform trains on: half OPQ's own cap of 65,536, whose training holds ~3x its subset; at
# 1M x 2,560-d this took the build's peak from 3.6 to 2.8 GiB and recall@10 stayed (bench_large_index.py).
TRANSFORM_TRAIN = 32_768
TRAIN_CHUNK = 8_192  # sample vectors read (and transformed) at a time by train_chunked


def _pow2_near(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(x, 1.0))))


def auto_factory(n: int, dim: int) -> str:
    """The factory string chosen for an index expected to hold `n` vectors of size `dim`."""
    if n < FLAT_MAX:
        return "Flat"
    if n < IVF_FLAT_MAX and n * dim * 4 <= IVF_FLAT_MAX_BYTES:
        return f"IVF{min(max(_pow2_near(4 * math.sqrt(n)), 256), 4096)},Flat"
    nlist = min(max(_pow2_near(4 * math.sqrt(n)), 1024), 16384)
    d = min(dim, OPQ_DIM)
    m = next((m for m in (64, 32, 16, 8) if d % m == 0), None)
    return f"OPQ{m}_{d},IVF{nlist},PQ{m}" if m else f"IVF{nlist},Flat"


def make_index(dim: int, factory: str, metric: str = "L2") -> faiss.Index:
    """A fresh index for `factory` whose ids are SQL image ids: wrapped in `IndexIDMap2`, except IVF.

    IVF indexes (also behind PCA/OPQ) store the ids themselves. Wrapping them in IDMap2 would be wrong:
    IDMap translates positions, and after an IVF remove_ids positions no longer match (searches return
    neighbouring ids, the next removal fails an assertion in IndexIDMap.cpp).
    """
    if factory.split(",")[0].startswith("IDMap"):
        raise BadInputError(f"factory {factory!r}: leave out IDMap, ids are handled by s2m")
    faiss_metric = {"L2": faiss.METRIC_L2, "IP": faiss.METRIC_INNER_PRODUCT}.get(metric)
    if faiss_metric is None:
        raise BadInputError(f"unknown FAISS metric {metric!r} (L2 or IP)")
    try:
        index = faiss.index_factory(dim, factory, faiss_metric)
        if not isinstance(core_index(index), faiss.IndexIVF):
            index = faiss.index_factory(dim, "IDMap2," + factory, faiss_metric)
    except RuntimeError as exc:
        raise BadInputError(f"FAISS cannot build factory {factory!r} for dim {dim}: {faiss_message(exc)}") from None
    core = core_index(index)
    if isinstance(core, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        # Polysemous training only renumbers the PQ centroids so that code Hamming distances mean something,
        # for a filter searches here never use; it took ~70% of an IVF-PQ training, distances are identical.
        core.do_polysemous_training = False
    return index


def has_own_ids(index: faiss.Index) -> bool:
    """Whether the index maps SQL ids itself: an IDMap2 wrapper, or an IVF core (ids in its inverted lists)."""
    return isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2)) or \
        isinstance(core_index(index), faiss.IndexIVF)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id held by the index (int64): IDMap2's id map, or the ids of each IVF inverted list."""
    top = faiss.downcast_index(index)
    if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(top.id_map).astype(np.int64, copy=False)
    ivf = core_index(index)
    parts = [np.zeros(0, np.int64)]
    for list_no in range(ivf.nlist):
        n = ivf.invlists.list_size(list_no)
        if n:
            ptr = ivf.invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, n).astype(np.int64))  # astype copies before release
            ivf.invlists.release_ids(list_no, ptr)
    return np.concatenate(parts)


def faiss_message(exc: BaseException) -> str:
    """The useful tail of a FAISS C++ error (its first line is a source location)."""
    text = " ".join(str(exc).split())
    if "Error: " in text:
        text = text.split("Error: ")[-1]
    else:  # "Error in <signature> at <file>:<line>: <message>"
        match = re.search(r" at \S+:\d+: (.*)$", text)
        text = match.group(1) if match else text
    # A short read reports errno of the last call, which succeeded: "read error in F: 5 != 96 (Success)".
    text = re.sub(r"^'[^']*' failed: ", "", text)
    text = re.sub(r"read error in ?\S*: (\d+) != (\d+) \(Success\)", r"file ends early (read \1 of \2 items)", text)
    return text[:160]


def core_index(index: faiss.Index) -> faiss.Index:
    """The index doing the search: inside IDMap and PreTransform (PCA, OPQ) wrappers."""
    core = faiss.downcast_index(index)
    while True:
        if isinstance(core, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            core = faiss.downcast_index(core.index)
        else:
            return core


def _has_opq(index: faiss.Index) -> bool:
    top = faiss.downcast_index(index)
    while isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        if isinstance(top, faiss.IndexPreTransform) and any(
                isinstance(faiss.downcast_VectorTransform(top.chain.at(i)), faiss.OPQMatrix)
                for i in range(top.chain.size())):
            return True
        top = faiss.downcast_index(top.index)
    return False


def ivf_nlist(index: faiss.Index) -> int | None:
    """Number of inverted lists of an IVF index, else None."""
    core = core_index(index)
    return core.nlist if isinstance(core, faiss.IndexIVF) else None


def training_size(index: faiss.Index, available: int) -> tuple[int, int]:
    """(minimum, wanted) number of training vectors for an untrained index, given `available`."""
    core = core_index(index)
    need = 1
    if isinstance(core, faiss.IndexIVF):
        need = max(need, core.nlist)
    pq = getattr(core, "pq", None)
    if pq is not None:
        need = max(need, pq.ksub)
    if _has_opq(index):
        need = max(need, 256)  # OPQ trains its rotation with 8-bit codes, whatever the codes the index stores
    return need, min(available, max(40 * need, 1000), MAX_TRAIN)


def is_compressed(index: faiss.Index) -> bool:
    """Whether the index stores lossy codes (PQ, scalar quantizer), so its distances are approximate."""
    return isinstance(core_index(index), (faiss.IndexIVFPQ, faiss.IndexPQ, faiss.IndexIVFScalarQuantizer,
                                          faiss.IndexScalarQuantizer))


def default_search(index: faiss.Index) -> dict:
    """Default search knobs stored in the stamp: nprobe for IVF, efSearch for HNSW, refine for lossy codes."""
    core = core_index(index)
    if isinstance(core, faiss.IndexIVF) and is_compressed(index):
        # Scanning PQ codes is cheap, and W+ codes are not well clustered: probe more lists than for IVF-Flat.
        return {"nprobe": min(core.nlist, max(16, core.nlist // 8)), "refine": DEFAULT_REFINE}
    if isinstance(core, faiss.IndexIVF):
        return {"nprobe": min(core.nlist, max(16, core.nlist // 16))}
    if isinstance(core, faiss.IndexHNSW):
        return {"efSearch": DEFAULT_EF_SEARCH}
    return {"refine": DEFAULT_REFINE} if is_compressed(index) else {}


def search_parameters(index: faiss.Index, k: int, sel=None, n_allowed: int | None = None,
                      nprobe: int | None = None, ef_search: int | None = None):
    """The SearchParameters subclass the core index accepts, with the selector at top level."""
    core = core_index(index)
    if isinstance(core, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or default_search(index)["nprobe"])
    if isinstance(core, faiss.IndexHNSW):
        ef = max(ef_search or DEFAULT_EF_SEARCH, k)
        if n_allowed:
            # A selective filter leaves few allowed nodes on the graph walk: widen it in proportion.
            ef = max(ef, min(index.ntotal, math.ceil(k * index.ntotal / n_allowed)))
        return faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    return faiss.SearchParameters(sel=sel) if sel is not None else None


@contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Route FAISS's C-level stderr chatter (k-means warnings) to the log instead of the user's terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                log.info("faiss: %s", line.strip())


def _training_failed(n: int, exc: RuntimeError) -> BadInputError:
    return BadInputError(f"training the FAISS index failed on {n} vectors: {faiss_message(exc)}; "
                         "choose a smaller --factory (fewer IVF lists) or the flat index")


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train an untrained index on `sample` [N, D]; too few vectors is a one-line BadInputError."""
    try:
        with _stderr_to_log():
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exc:
        raise _training_failed(len(sample), exc) from None


def _unwrapped(index: faiss.Index) -> tuple[list[faiss.Index], faiss.Index]:
    """(the IDMap wrappers from the top down, the index under them)."""
    wrappers, top = [], faiss.downcast_index(index)
    while isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        wrappers.append(top)
        top = faiss.downcast_index(top.index)
    return wrappers, top


def train_chunked(index: faiss.Index, n: int, read: Callable[[np.ndarray], np.ndarray], *, seed: int = 0,
                  chunk: int = TRAIN_CHUNK, transform_n: int = TRANSFORM_TRAIN) -> None:
    """Train on the `n` sample vectors `read(positions)` returns, never holding all of them at full size.

    An index behind a transform (OPQ, PCA) trains the transforms on a seeded subset of `transform_n` vectors
    (half OPQ's own cap; PCA would take more), then reads the sample `chunk` vectors at a time, keeps them
    transformed (256 dims instead of 2,560 for the large-index default) and trains the core index on those:
    for OPQ what `index.train(sample)` does, in a fraction of the memory. Other indexes, and samples no larger
    than the subset, are read whole.
    """
    wrappers, top = _unwrapped(index)
    if not isinstance(top, faiss.IndexPreTransform) or n <= max(chunk, transform_n):
        train(index, read(np.arange(n)))
        return
    transforms = [faiss.downcast_VectorTransform(top.chain.at(i)) for i in range(top.chain.size())]
    core = faiss.downcast_index(top.index)
    try:
        with _stderr_to_log():
            subset = np.sort(np.random.default_rng(seed).choice(n, size=min(n, transform_n), replace=False))
            x = np.ascontiguousarray(read(subset), dtype=np.float32)
            for vt in transforms:
                if not vt.is_trained:
                    vt.train(x)
                x = vt.apply(x)
            del x
            reduced = np.empty((n, core.d), dtype=np.float32)
            for start in range(0, n, chunk):
                x = np.ascontiguousarray(read(np.arange(start, min(n, start + chunk))), dtype=np.float32)
                for vt in transforms:
                    x = vt.apply(x)
                reduced[start:start + len(x)] = x
            core.train(reduced)
    except RuntimeError as exc:
        raise _training_failed(n, exc) from None
    top.is_trained = core.is_trained
    for wrapper in wrappers:
        wrapper.is_trained = core.is_trained
