"""Canonical sketches: one line drawing whatever the pen, canvas, grain or grey level; new free-hand knobs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from s2m_retrieval.data.canonical import canonical_sketch
from s2m_retrieval.data.phantom import make_phantom
from s2m_retrieval.data.sketch import FreehandConfig, mask_contours, render_sketch, sketch_from_mask
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.model.pipeline import sketch_batch


def _ink(sketch: np.ndarray) -> np.ndarray:
    return sketch < 128


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of a's ink within one pixel of b's ink (and the other way round), the smaller."""
    from scipy.ndimage import binary_dilation

    a, b = _ink(a), _ink(b)
    near_b, near_a = binary_dilation(b, iterations=1), binary_dilation(a, iterations=1)
    return min((a & near_b).sum() / a.sum(), (b & near_a).sum() / b.sum())


@pytest.fixture(scope="module")
def strokes():
    return mask_contours(make_phantom(2, 5, 64)[1])


def test_pen_width_and_canvas_do_not_change_the_canonical_sketch(strokes):
    reference = canonical_sketch(render_sketch(strokes, 64, stroke_width=1.5), 64)
    for size, width in ((64, 1.0), (64, 4.0), (256, 2.0), (256, 12.0), (512, 6.0)):
        drawn = render_sketch(strokes, size, stroke_width=width)
        canon = canonical_sketch(drawn, 64)
        assert canon.shape == (64, 64) and canon.dtype == np.uint8
        assert _overlap(canon, reference) > 0.9, (size, width)
        # the redrawn line has the training width: the same amount of ink whatever the pen
        assert abs(_ink(canon).sum() / _ink(reference).sum() - 1) < 0.25, (size, width)
    thick = render_sketch(strokes, 64, stroke_width=4.0)
    assert _ink(thick).sum() > 1.8 * _ink(reference).sum()   # the raw drawings really did differ


def test_grey_pencil_and_colour_become_the_same_black_line(strokes):
    drawn = render_sketch(strokes, 256, stroke_width=3.0)
    reference = canonical_sketch(drawn, 64)
    faint = (255 - (255 - drawn.astype(np.float32)) * 0.4).astype(np.uint8)      # light grey pencil
    grain = dataclasses.replace(FreehandConfig.off(), pencil=0.7)
    pencil = render_sketch(strokes, 256, stroke_width=3.0, freehand=grain, rng=3)
    blue = np.stack([np.full_like(drawn, 255), np.full_like(drawn, 255), drawn], axis=2)[..., [2, 2, 0]]
    rgba = np.dstack([np.zeros((256, 256, 3), np.uint8), 255 - drawn])        # black ink on a transparent page
    for variant in (faint, pencil, blue, rgba):
        assert _overlap(canonical_sketch(variant, 64), reference) > 0.9
    assert (pencil[_ink(drawn)] > 40).mean() > 0.3                             # the grain really is grey


def test_blank_pages_stay_blank_and_bad_inputs_are_errors():
    assert (canonical_sketch(np.full((100, 80), 255, np.uint8), 64) == 255).all()
    noisy = np.random.default_rng(0).integers(235, 256, (64, 64)).astype(np.uint8)  # paper grain only
    assert (canonical_sketch(noisy, 64) == 255).all()
    with pytest.raises(BadInputError):
        canonical_sketch(np.zeros((4, 4), np.float32), 64)
    with pytest.raises(BadInputError):
        canonical_sketch(np.zeros((4, 4, 2), np.uint8), 64)
    with pytest.raises(BadInputError, match="blank"):
        sketch_batch(np.full((64, 64), 255, np.uint8), 64)


def test_sketch_batch_feeds_canonical_sketches(strokes):
    drawn = render_sketch(strokes, 256, stroke_width=8.0)
    x = sketch_batch(np.stack([drawn, drawn]), 64)
    assert x.shape == (2, 1, 64, 64) and float(x.min()) >= -1 and float(x.max()) <= 1
    expected = canonical_sketch(drawn, 64).astype(np.float32) / 127.5 - 1
    assert np.allclose(x[0, 0].numpy(), expected)


def test_new_freehand_knobs(strokes):
    mask = make_phantom(2, 5, 64)[1]
    off = FreehandConfig()
    assert off.partial == off.elastic == off.pen_spread == off.pencil == 0
    assert off.scaled(1.5).pencil == 0                       # scaled defaults keep them off (held-out styles)
    plain = sketch_from_mask(mask, 64, freehand=off, seed=1)
    partial = dataclasses.replace(off, partial=1.0)
    inks = [_ink(sketch_from_mask(mask, 64, freehand=partial, seed=s)).sum() for s in range(8)]
    assert np.mean(inks) < _ink(plain).sum()                 # partial drawings leave strokes out
    bent = sketch_from_mask(mask, 64, freehand=dataclasses.replace(off, elastic=0.03), seed=1)
    assert not np.array_equal(bent, plain)
    wide = [_ink(sketch_from_mask(mask, 64, freehand=dataclasses.replace(off, pen_spread=1.0), seed=s)).sum()
            for s in range(8)]
    assert np.std(wide) > 0.1 * np.mean(wide)                # the pen width varies between drawings
    assert np.array_equal(sketch_from_mask(mask, 64, freehand=partial, seed=3),
                          sketch_from_mask(mask, 64, freehand=partial, seed=3))
