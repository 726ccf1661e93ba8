"""Sketch synthesis on hand-made masks: contours, clean rendering, free-hand augmentation, blank sketches."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from s2m_retrieval.data.sketch import (FreehandConfig, Stroke, is_blank_sketch, mask_contours, render_sketch,
                                       sketch_from_mask, sketch_to_tensor)
from s2m_retrieval.errors import BadInputError

BOX = (16, 20, 48, 44)  # rows r0:r1, cols c0:c1


def rect_mask(box=BOX, label=1, size=64):
    mask = np.zeros((size, size), np.uint8)
    r0, c0, r1, c1 = box
    mask[r0:r1, c0:c1] = label
    return mask


def two_parts():
    """Class 1 on the left, class 3 on the right, not touching."""
    mask = rect_mask((16, 6, 48, 26), 1)
    mask[16:48, 38:58] = 3
    return mask


def rect_boundary_distance(box=BOX, size=64, scale=1):
    """Distance (output pixels) from each pixel centre of a (size*scale)^2 image to the box outline."""
    r0, c0, r1, c1 = [v * scale for v in box]
    y, x = np.mgrid[0:size * scale, 0:size * scale] + 0.5
    dx = np.maximum(np.maximum(c0 - x, x - c1), 0)
    dy = np.maximum(np.maximum(r0 - y, y - r1), 0)
    inside = np.minimum.reduce([x - c0, c1 - x, y - r0, r1 - y])
    return np.where(np.hypot(dx, dy) > 0, np.hypot(dx, dy), np.maximum(inside, 0))


def total_length(strokes, size=64):
    out = 0.0
    for s in strokes:
        pts = s.points * size
        if s.closed:
            pts = np.vstack([pts, pts[:1]])
        out += np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()
    return out


def test_rectangle_contour_lies_on_its_boundary():
    strokes = mask_contours(rect_mask())
    assert len(strokes) == 1 and strokes[0].closed and strokes[0].label == 1
    pts = strokes[0].points * 64
    r0, c0, r1, c1 = BOX
    off_edge = np.minimum.reduce([abs(pts[:, 0] - c0), abs(pts[:, 0] - c1), abs(pts[:, 1] - r0), abs(pts[:, 1] - r1)])
    assert off_edge.max() < 0.35
    assert np.allclose(pts.min(0), [c0, r0], atol=0.3) and np.allclose(pts.max(0), [c1, r1], atol=0.3)
    assert abs(total_length(strokes) - 2 * ((r1 - r0) + (c1 - c0))) < 5  # only the corners are rounded
    assert len(pts) <= 12  # simplified: a rectangle needs a handful of vertices, not one per pixel edge


@pytest.mark.parametrize("size", [64, 128])
def test_clean_strokes_ink_the_boundary_and_nothing_else(size):
    sketch = sketch_from_mask(rect_mask(), size=size)
    assert sketch.shape == (size, size) and sketch.dtype == np.uint8
    ink = sketch < 128
    dist = rect_boundary_distance(scale=size // 64)
    assert dist[ink].max() <= 1.0 * size / 64 + 0.5
    # every pixel touching the outline has ink within a pixel or so: no side or corner is missing
    near_ink = ndimage.distance_transform_edt(~ink)
    assert near_ink[dist <= 0.5 * size / 64].max() <= 1.5
    assert sketch[0].min() == 255 and sketch[size // 2, size // 2] == 255


def test_shared_boundary_is_drawn_once_by_the_smaller_region():
    mask = rect_mask((16, 10, 48, 32), 1)
    mask[16:48, 32:50] = 2  # touching on the column boundary x = 32, smaller than class 1
    strokes = mask_contours(mask)
    union, shared = 2 * (32 + 40), 32
    assert abs(total_length(strokes) - (union + shared)) < 6  # twice the shared edge would be +32
    small = [s for s in strokes if s.label == 2]
    assert len(small) == 1 and small[0].closed
    assert all(not s.closed for s in strokes if s.label == 1)


def test_class_filter_and_image_border():
    mask = rect_mask((16, 10, 48, 32), 1)
    mask[16:48, 32:50] = 2
    assert {s.label for s in mask_contours(mask, classes=[1])} == {1}
    only_one = mask_contours(mask, classes=[1])
    assert len(only_one) == 1 and only_one[0].closed  # nothing else drawn, so it keeps the shared edge

    bottom = rect_mask((40, 10, 64, 54), 5)  # runs off the bottom edge of the image
    sketch = sketch_from_mask(bottom)
    ink_cols = np.flatnonzero(sketch[-1] < 128)
    assert len(ink_cols) and np.all(np.minimum(abs(ink_cols - 10), abs(ink_cols - 54)) <= 2)  # sides only


def test_bare_polyline_and_non_square_size():
    line = render_sketch([np.array([[0.1, 0.1], [0.9, 0.9]])], 32)
    assert line[16, 16] < 128 and line[3, 28] == 255 and line[28, 3] == 255
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 10:40] = 3
    assert sketch_from_mask(mask).shape == (32, 48)
    assert sketch_from_mask(mask, size=(16, 24)).shape == (16, 24)


def test_freehand_is_deterministic_per_seed_and_off_is_clean():
    mask = two_parts()
    cfg = FreehandConfig()
    a, b = sketch_from_mask(mask, freehand=cfg, seed=3), sketch_from_mask(mask, freehand=cfg, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sketch_from_mask(mask, freehand=cfg, seed=4))
    clean = sketch_from_mask(mask)
    assert np.array_equal(clean, sketch_from_mask(mask, freehand=FreehandConfig.off(), seed=9))
    assert not FreehandConfig.off().active and cfg.active


def test_freehand_changes_the_sketch_but_stays_near_the_strokes():
    mask = rect_mask()
    clean = sketch_from_mask(mask)
    to_clean = ndimage.distance_transform_edt(clean >= 128)
    cfg = FreehandConfig(missing_prob=0.0, extra_prob=0.0)
    for seed in range(5):
        hand = sketch_from_mask(mask, freehand=cfg, seed=seed)
        ink = hand < 128
        assert (hand != clean).sum() > 50
        assert np.percentile(to_clean[ink], 95) <= 6.0  # displaced by a few pixels, not elsewhere
        to_hand = ndimage.distance_transform_edt(~ink)
        assert (to_hand[clean < 128] <= 4).mean() >= 0.8  # gaps drop a little of the outline, not most


@pytest.mark.parametrize("change", [
    {"wobble": 0.02}, {"width_jitter": 0.6}, {"pressure": 0.6}, {"gap_rate": 6.0, "gap_length": 0.06},
    {"overshoot": 0.08}, {"double_prob": 1.0, "double_offset": 0.03}, {"missing_prob": 0.9},
    {"extra_prob": 1.0}, {"part_shift": 0.04}, {"part_scale": 0.15}, {"rotate": 10.0},
    {"scale": 0.15}, {"translate": 0.08},
])
def test_each_augmentation_alone_changes_the_sketch(change):
    mask = two_parts()
    clean = sketch_from_mask(mask)
    cfg = dataclasses.replace(FreehandConfig.off(), **change)
    assert any(not np.array_equal(clean, sketch_from_mask(mask, freehand=cfg, seed=s)) for s in range(4))


def test_missing_probability_one_removes_all_but_one_region():
    mask = two_parts()
    cfg = dataclasses.replace(FreehandConfig.off(), missing_prob=1.0)
    kept = set()
    for seed in range(8):
        ink = sketch_from_mask(mask, freehand=cfg, seed=seed) < 128
        left, right = ink[:, :32].sum(), ink[:, 32:].sum()
        assert (left == 0) != (right == 0)  # exactly one of the two outlines is drawn
        kept.add("left" if left else "right")
    assert kept == {"left", "right"}


def test_extra_part_draws_away_from_the_anatomy():
    mask = rect_mask()
    cfg = dataclasses.replace(FreehandConfig.off(), extra_prob=1.0)
    far = rect_boundary_distance() > 3
    stray = [(sketch_from_mask(mask, freehand=cfg, seed=s)[far] < 128).sum() for s in range(6)]
    assert sum(stray) > 20 and (sketch_from_mask(mask)[far] < 128).sum() == 0


def test_blank_detection():
    assert is_blank_sketch(np.full((64, 64), 255, np.uint8))
    assert is_blank_sketch(np.zeros((64, 64), np.uint8))  # uniformly dark: no lines either
    speck = np.full((64, 64), 255, np.uint8)
    speck[10, 10:12] = 0
    assert is_blank_sketch(speck)
    assert is_blank_sketch(sketch_from_mask(np.zeros((64, 64), np.uint8)))
    sketch = sketch_from_mask(rect_mask())
    assert not is_blank_sketch(sketch)
    assert not is_blank_sketch(np.repeat(sketch[..., None], 3, axis=2))


def test_sketch_to_tensor_maps_paper_to_plus_one_and_ink_to_minus_one():
    sketch = np.full((8, 10), 255, np.uint8)
    sketch[2, 3] = 0
    t = sketch_to_tensor(sketch)
    assert tuple(t.shape) == (1, 8, 10) and str(t.dtype) == "torch.float32"
    assert float(t[0, 0, 0]) == 1.0 and float(t[0, 2, 3]) == -1.0
    with pytest.raises(BadInputError):
        sketch_to_tensor(sketch.astype(np.float32))


def test_bad_inputs_and_config():
    with pytest.raises(BadInputError):
        mask_contours(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(BadInputError):
        mask_contours(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        FreehandConfig(wobble=-1.0)
    with pytest.raises(ValueError):
        FreehandConfig(missing_prob=1.5)
    strong = FreehandConfig().scaled(20.0)
    assert strong.missing_prob == 1.0 and strong.wobble == pytest.approx(20 * FreehandConfig().wobble)
    assert isinstance(mask_contours(rect_mask())[0], Stroke)
