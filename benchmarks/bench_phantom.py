"""Phantom archive throughput (images/s) against the PNG-writing floor measured in the same run."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.data.phantom_archive import write_phantom_archive


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Print render-only and whole-archive rates, and the floor of writing the same PNGs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    n = args.n
    for size in (64, 128, 256):
        k = max(50, n // (size // 64) ** 2)
        rate = _rate(lambda: [make_phantom(0, i, size) for i in range(k)], k)
        print(f"render only   {size:3d} px: {rate:8.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = _rate(lambda: write_phantom_archive(tmp / "a", n=n, size=64, seed=0, workers=1), n)
        parallel = _rate(lambda: write_phantom_archive(tmp / "p", n=n, size=64, seed=0, workers=None), n)
        images = [np.asarray(Image.open(p)) for p in sorted((tmp / "a" / "images").glob("*.png"))]
        masks = [np.asarray(Image.open(p)) for p in sorted((tmp / "a" / "masks").glob("*.png"))]
        (tmp / "b").mkdir()

        def write_only():
            for i, (im, m) in enumerate(zip(images, masks)):
                Image.fromarray(im).save(tmp / "b" / f"{i}.png", compress_level=6)
                Image.fromarray(m).save(tmp / "b" / f"{i}m.png", compress_level=6)

        floor = _rate(write_only, n)
    print(f"archive write  64 px, 1 process:   {archive:8.1f} images/s")
    print(f"archive write  64 px, all cores:   {parallel:8.1f} images/s (target >= 200)")
    print(f"PNG-write floor 64 px: {floor:8.1f} images/s; archive / floor = {archive / floor:.2f}")


if __name__ == "__main__":
    main()
