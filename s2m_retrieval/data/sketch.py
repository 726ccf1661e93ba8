"""Sketch synthesis: label maps to clinician-style contour strokes, with free-hand augmentation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import find_contours

from s2m_retrieval.errors import BadInputError

SUPERSAMPLE = 8  # strokes drawn at 8x and box-reduced: even antialiasing, PIL rounding < 0.1 px
INK_LEVEL = 128  # a pixel darker than this is ink

_STRENGTHS = ("wobble", "width_jitter", "pressure", "gap_rate", "gap_length", "overshoot",
              "double_prob", "double_offset", "missing_prob", "extra_prob", "part_shift",
              "part_scale", "rotate", "scale", "translate", "partial", "elastic", "pen_spread", "pencil")
_PROBABILITIES = ("double_prob", "missing_prob", "extra_prob", "partial")
PARTIAL_KEEP = 0.3  # a partial drawing keeps a random 30-100 % of its strokes


@dataclass(frozen=True)
class FreehandConfig:
    """Strengths of the free-hand augmentation; lengths are fractions of the shorter image side."""

    wobble: float = 0.006          # amplitude of the low-frequency sideways drift of a stroke
    wobble_cycles: float = 2.5     # its highest frequency, cycles per image side of stroke length
    width_jitter: float = 0.25     # log-std of each stroke's width factor
    pressure: float = 0.35         # relative along-stroke width variation (also tapers the ends)
    gap_rate: float = 0.6          # expected gaps per image side of stroke length
    gap_length: float = 0.04       # longest gap
    overshoot: float = 0.03        # longest run past a stroke end or past a loop's closure
    double_prob: float = 0.15      # chance a stroke is partly retraced beside itself
    double_offset: float = 0.012   # distance of that retrace
    missing_prob: float = 0.1      # chance each region's outline is left out (one always stays)
    extra_prob: float = 0.15       # chance of one stray stroke
    part_shift: float = 0.015      # std of each region's displacement (drawn from memory)
    part_scale: float = 0.04       # log-std of each region's scale about its centre
    rotate: float = 4.0            # largest rotation of the whole drawing, degrees
    scale: float = 0.05            # largest relative scale change of the whole drawing
    translate: float = 0.03        # largest shift of the whole drawing
    # Off by default (and so in every scaled() default): the hand-drawn variety E's training adds.
    partial: float = 0.0           # chance the drawing keeps only PARTIAL_KEEP-100 % of its strokes
    elastic: float = 0.0           # amplitude of a smooth displacement field over the whole drawing
    pen_spread: float = 0.0        # the whole drawing's pen width factor is exp(U(-spread / 2, spread))
    pencil: float = 0.0            # pencil grain: ink darkness varies by up to this fraction, pixel by pixel

    def __post_init__(self):
        for name in _STRENGTHS + ("wobble_cycles",):
            if getattr(self, name) < 0:
                raise ValueError(f"FreehandConfig.{name} must be >= 0")
        for name in _PROBABILITIES:
            if getattr(self, name) > 1:
                raise ValueError(f"FreehandConfig.{name} is a probability, must be <= 1")

    @classmethod
    def off(cls) -> "FreehandConfig":
        """A config that changes nothing: the clean sketch."""
        return cls(**{name: 0.0 for name in _STRENGTHS})

    def scaled(self, factor: float) -> "FreehandConfig":
        """Every strength times `factor` (probabilities capped at 1), e.g. 2.0 for training E."""
        values = {name: getattr(self, name) * factor for name in _STRENGTHS}
        values.update({name: min(1.0, values[name]) for name in _PROBABILITIES})
        return dataclasses.replace(self, **values)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return any(getattr(self, name) > 0 for name in _STRENGTHS)


@dataclass(frozen=True, eq=False)
class Stroke:
    """One polyline: points [K, 2] as (x, y) in [0, 1] image units, the label it outlines (-1: stray)."""

    points: np.ndarray
    label: int = 0
    closed: bool = False  # a closed loop does not repeat its first point


def _check_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise BadInputError(f"a label mask must be a non-empty [H, W] array, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise BadInputError(f"a label mask must hold integer class ids, got dtype {mask.dtype}")
    return mask


def _smooth(points: np.ndarray, closed: bool, passes: int) -> np.ndarray:
    # [1, 2, 1] passes turn the marching-squares staircase into the smooth line a hand draws
    points = points.copy()
    for _ in range(passes):
        if closed:
            padded = np.vstack([points[-1:], points, points[:1]])
            points = 0.25 * padded[:-2] + 0.5 * points + 0.25 * padded[2:]
        elif len(points) > 2:
            points[1:-1] = 0.25 * points[:-2] + 0.5 * points[1:-1] + 0.25 * points[2:]
    return points


def _runs(keep: np.ndarray, widen: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of each run of True, widened by `widen` vertices each side."""
    edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(max(a - widen, 0), min(b + widen, len(keep))) for a, b in zip(starts, stops)]


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: the fewest vertices within `tolerance` of the polyline, both ends kept."""
    # plain Python on a list: contours are short and numpy's per-call cost dominated (5x slower)
    pts = points.tolist()
    keep = [False] * len(pts)
    keep[0] = keep[-1] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        (ax, ay), (bx, by) = pts[a], pts[b]
        cx, cy = bx - ax, by - ay
        norm = math.hypot(cx, cy)
        if norm > 1e-9:
            dist = [abs(cx * (y - ay) - cy * (x - ax)) / norm for x, y in pts[a + 1:b]]
        else:  # a closed ring: split it at its farthest point
            dist = [math.hypot(x - ax, y - ay) for x, y in pts[a + 1:b]]
        i = max(range(len(dist)), key=dist.__getitem__)
        if dist[i] > tolerance:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return points[np.array(keep)]


def _length(points: np.ndarray, closed: bool) -> float:
    ring = np.vstack([points, points[:1]]) if closed else points
    return float(np.linalg.norm(np.diff(ring, axis=0), axis=1).sum())


def mask_contours(mask, classes: Sequence[int] | None = None, *, smooth: int = 2,
                  tolerance: float = 0.4, min_length: float = 4.0) -> list[Stroke]:
    """Outlines of the labelled regions as simplified strokes, each shared boundary drawn once.

    Regions are traced smallest first and a boundary already drawn is skipped, so a part (uvula,
    tonsil, follicle) keeps its whole closed outline and the larger region around it draws only
    the rest. Lines along the image border are not drawn. `tolerance` and `min_length` are in
    mask pixels; points come back in [0, 1] units (x = (col + 0.5) / W, y = (row + 0.5) / H).
    """
    mask = _check_mask(mask)
    h, w = mask.shape
    labels, counts = np.unique(mask, return_counts=True)
    wanted = None if classes is None else {int(c) for c in classes}
    order = sorted((int(n), int(c)) for c, n in zip(labels, counts)
                   if c != 0 and (wanted is None or c in wanted))
    drawn: list[int] = []
    strokes: list[Stroke] = []
    for _, label in order:
        # 'high': diagonal neighbours of one region belong to one outline
        for contour in find_contours((mask == label).astype(np.uint8), 0.5, fully_connected="high"):
            closed = len(contour) > 3 and np.array_equal(contour[0], contour[-1])
            if closed:
                contour = contour[:-1]
            # each vertex sits halfway between an inside pixel and an outside one: look outside
            lo = np.floor(contour + 1e-6).astype(int)
            hi = np.ceil(contour - 1e-6).astype(int)
            at_lo, at_hi = mask[lo[:, 0], lo[:, 1]], mask[hi[:, 0], hi[:, 1]]
            outside = np.where(at_lo == label, at_hi, at_lo)
            keep = ~np.isin(outside, drawn)
            contour = _smooth(contour, closed, smooth)
            if keep.all():
                pieces = [(contour, closed)]
            else:
                if closed:  # start the ring on a skipped vertex so no kept run wraps around
                    shift = int(np.flatnonzero(~keep)[0])
                    contour = np.vstack([np.roll(contour, -shift, 0), np.roll(contour, -shift, 0)[:1]])
                    keep = np.append(np.roll(keep, -shift), False)
                # widened by a vertex so each piece ends on the shared line instead of short of it
                pieces = [(contour[a:b], False) for a, b in _runs(keep, widen=1)]
            for piece, piece_closed in pieces:
                ring = np.vstack([piece, piece[:1]]) if piece_closed else piece
                simple = _simplify(ring, tolerance)
                if piece_closed:
                    simple = simple[:-1]
                if len(simple) < 2 or _length(simple, piece_closed) < min_length:
                    continue
                xy = np.stack([(simple[:, 1] + 0.5) / w, (simple[:, 0] + 0.5) / h], axis=1)
                strokes.append(Stroke(xy, label, bool(piece_closed and len(simple) > 2)))
        drawn.append(label)
    return strokes


def default_stroke_width(size: int) -> float:
    """Stroke width in output pixels for an image side of `size`: 1.5 px at 64, 2 at 128, 3 at 256."""
    return 1.0 + size / 128.0


def _as_rng(rng) -> np.random.Generator:
    # None means seed 0: a sketch is reproducible unless the caller asks for variety
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


def _resample(points: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~`spacing` along a polyline, and their arc-length positions."""
    step = np.linalg.norm(np.diff(points, axis=0), axis=1)
    points = np.vstack([points[:1], points[1:][step > 1e-9]])
    arc = np.concatenate([[0.0], np.cumsum(step[step > 1e-9])])
    if arc[-1] <= 0:
        return points[:1], arc[:1]
    t = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / spacing)) + 1))
    return np.stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])], 1), t


def _normals(points: np.ndarray) -> np.ndarray:
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], 1)


def _noise(rng: np.random.Generator, t: np.ndarray, cycles: float, side: float) -> np.ndarray:
    """Smooth zero-mean noise of std ~1 along arc length `t`: three random low-frequency sines."""
    freq = rng.uniform(0.25, 1.0, 3) * cycles / side
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    weight = rng.normal(size=3)
    return (weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])).sum(0) / np.sqrt(1.5)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _stray_stroke(rng: np.random.Generator, side: float, w: float, h: float) -> np.ndarray:
    """A short random arc somewhere in the middle of the image: a stroke that outlines nothing."""
    start = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    length, heading, bend = rng.uniform(0.08, 0.25) * side, rng.uniform(0, 2 * np.pi), rng.normal(0, 2.0)
    s = np.linspace(0.0, 1.0, 12)
    angle = heading + bend * s
    return start + length * np.cumsum(np.stack([np.cos(angle), np.sin(angle)], 1), 0) / len(s)


def _elastic(pieces, rng: np.random.Generator, amplitude: float, side: float):
    """Every piece moved by one smooth random displacement field (a few low-frequency waves per axis): whole
    outlines bend together, as a hand misjudges proportions."""
    k = rng.uniform(0.5, 1.5, (2, 3, 2)) * 2 * np.pi / side          # [axis, wave, (kx, ky)]
    phase = rng.uniform(0, 2 * np.pi, (2, 3))
    weight = rng.normal(size=(2, 3)) / np.sqrt(3)

    def move(p: np.ndarray) -> np.ndarray:
        waves = np.sin(p @ k.transpose(0, 2, 1) + phase[:, None, :])     # [axis, K, wave]
        return p + amplitude * (waves * weight[:, None, :]).sum(axis=2).T
    return [(move(p), wid) for p, wid in pieces]


def _freehand_pieces(strokes: list[tuple[np.ndarray, int, bool]], f: FreehandConfig,
                     rng: np.random.Generator, w: float, h: float, width: float):
    """Free-hand versions of pixel-space strokes: a list of (points [K, 2], widths [K])."""
    side = min(w, h)
    labels = sorted({label for _, label, _ in strokes})
    dropped = {label for label in labels if rng.random() < f.missing_prob}
    if labels and len(dropped) == len(labels):  # an empty drawing teaches nothing: keep one part
        dropped.discard(labels[int(rng.integers(len(labels)))])
    kept = []
    for label in labels:  # each part drawn from memory: a little off in place and size
        centre = np.vstack([p for p, lab, _ in strokes if lab == label]).mean(0)
        factor, shift = np.exp(rng.normal(0, f.part_scale)), rng.normal(0, f.part_shift * side, 2)
        if label not in dropped:
            kept += [(centre + factor * (p - centre) + shift, closed) for p, lab, closed in strokes if lab == label]
    if rng.random() < f.extra_prob:
        kept.append((_stray_stroke(rng, side, w, h), False))
    if f.partial > 0 and len(kept) > 1 and rng.random() < f.partial:
        keep = rng.random(len(kept)) < rng.uniform(PARTIAL_KEEP, 1.0)
        keep[int(rng.integers(len(kept)))] = True
        kept = [item for item, k in zip(kept, keep) if k]
    if f.pen_spread > 0:
        width = width * float(np.exp(rng.uniform(-f.pen_spread / 2, f.pen_spread)))

    spacing = side / 96.0
    pieces = []
    for points, closed in kept:
        if closed:  # start anywhere on the loop; stop a bit short of, or a bit past, the start
            ring = np.vstack([points, points, points[:1]])
            dense, arc = _resample(ring, spacing)
            loop = arc[-1] / 2
            start = rng.uniform(0, loop)
            t = np.arange(start, start + loop + rng.uniform(-0.3, 1.0) * f.overshoot * side, spacing)
            dense = np.stack([np.interp(t, arc, dense[:, 0]), np.interp(t, arc, dense[:, 1])], 1)
        else:
            dense, _ = _resample(points, spacing)
            if len(dense) < 2:
                continue
            ends = rng.uniform(0, f.overshoot * side, 2)
            head = dense[0] - ends[0] * _unit(dense[1] - dense[0])
            tail = dense[-1] + ends[1] * _unit(dense[-1] - dense[-2])
            dense, _ = _resample(np.vstack([head, dense, tail]), spacing)
        if len(dense) < 2:
            continue
        t = np.arange(len(dense)) * spacing
        dense = dense + _normals(dense) * (f.wobble * side * _noise(rng, t, f.wobble_cycles, side))[:, None]
        widths = np.full(len(dense), width * np.exp(rng.normal(0, f.width_jitter)))
        if f.pressure > 0:
            taper = np.clip(np.minimum(t, t[-1] - t) / (4 * width), 0.4, 1.0)
            widths *= np.clip(1 + f.pressure * _noise(rng, t, 2 * f.wobble_cycles + 1, side), 0.35, 2.0) * taper
        strands = [(dense, widths)]
        if rng.random() < f.double_prob:  # a partial retrace beside the first line
            span = max(2, int(rng.uniform(0.3, 1.0) * len(dense)))
            a = int(rng.integers(0, len(dense) - span + 1))
            sub = slice(a, a + span)
            drift = f.wobble * _noise(rng, t[sub], f.wobble_cycles, side)
            offset = side * (f.double_offset * rng.choice([-1.0, 1.0]) + drift)
            strands.append((dense[sub] + _normals(dense[sub]) * offset[:, None], widths[sub] * 0.8))
        for pts, wid in strands:
            keep = np.ones(len(pts), bool)
            for _ in range(rng.poisson(f.gap_rate * len(pts) * spacing / side)):
                centre, half = rng.uniform(0, len(pts) * spacing), 0.5 * rng.uniform(0.3, 1.0) * f.gap_length * side
                keep &= np.abs(np.arange(len(pts)) * spacing - centre) > half
            pieces += [(pts[a:b], wid[a:b]) for a, b in _runs(keep) if b - a >= 2]

    if f.elastic > 0:
        pieces = _elastic(pieces, rng, f.elastic * side, side)
    angle = np.deg2rad(rng.uniform(-f.rotate, f.rotate))
    factor = 1 + rng.uniform(-f.scale, f.scale)
    shift = rng.uniform(-f.translate, f.translate, 2) * side
    rot = factor * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([w / 2, h / 2])
    return [((p - centre) @ rot.T + centre + shift, wid) for p, wid in pieces]


def render_sketch(strokes: Sequence[Stroke | np.ndarray], size: int | tuple[int, int], *,
                  stroke_width: float | None = None, freehand: FreehandConfig | None = None,
                  rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Draw strokes as dark (0) antialiased lines on white (255): uint8 [H, W] (`size` = side or (H, W)).

    A bare [K, 2] array counts as an open stroke in [0, 1] units. `stroke_width` is in output
    pixels (default `default_stroke_width`). `rng` (a seed or Generator; None = seed 0) only
    drives `freehand`; the same seed gives the same sketch.
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise BadInputError(f"sketch size must be positive, got {size}")
    width = default_stroke_width(min(h, w)) if stroke_width is None else float(stroke_width)
    items = [(np.asarray(s.points, float), s.label, s.closed) if isinstance(s, Stroke)
             else (np.asarray(s, float), 0, False) for s in strokes]
    items = [(p * [w, h], label, closed) for p, label, closed in items if p.ndim == 2 and len(p) >= 2]

    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 255)
    draw = ImageDraw.Draw(canvas)
    # a pixel i spans [i, i+1) in stroke units; PIL puts pixel k's centre at coordinate k
    to_canvas = lambda p: p * SUPERSAMPLE - 0.5  # noqa: E731
    if freehand is None or not freehand.active:
        line = max(1, round(width * SUPERSAMPLE))
        for points, _, closed in items:
            pts = to_canvas(np.vstack([points, points[:1]]) if closed else points)
            draw.line([tuple(q) for q in pts], fill=0, width=line)
            # round joins and caps; PIL's joint="curve" does the same in Python at 3x the cost
            for x, y in pts.tolist():
                draw.ellipse((x - line / 2, y - line / 2, x + line / 2, y + line / 2), fill=0)
    else:
        gen = _as_rng(rng)
        for points, widths in _freehand_pieces(items, freehand, gen, w, h, width):
            pts = to_canvas(points).tolist()
            sizes = np.maximum(np.rint(widths * SUPERSAMPLE), 1).astype(int)
            # one PIL call per run of equal width: points are dense, so joins inside a run need no caps
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(sizes)) + 1, [len(pts) - 1]])
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                r = sizes[a] / 2
                if b > a:
                    draw.line([tuple(q) for q in pts[a:b + 1]], fill=0, width=int(sizes[a]))
                for x, y in (pts[a], pts[b]):
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    out = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.uint8)
    if freehand is not None and freehand.active and freehand.pencil > 0:
        # graphite on paper: each pixel of a line only partly dark, in a grain of 1-2 px
        coarse = np.kron(gen.random((h // 2 + 1, w // 2 + 1)), np.ones((2, 2)))[:h, :w]
        grain = coarse * 0.5 + gen.random((h, w)) * 0.5
        darkness = (255.0 - out) * (1.0 - freehand.pencil * grain)
        out = np.round(255.0 - darkness).astype(np.uint8)
    return out


def sketch_from_mask(mask, size: int | tuple[int, int] | None = None, *, freehand: FreehandConfig | None = None,
                     seed: int | None = None, stroke_width: float | None = None) -> np.ndarray:
    """One call: a label mask [H, W] to a uint8 sketch ([H, W] by default, or `size`)."""
    mask = _check_mask(mask)
    return render_sketch(mask_contours(mask), mask.shape if size is None else size,
                         stroke_width=stroke_width, freehand=freehand, rng=seed)


def sketch_to_tensor(sketch):
    """A uint8 sketch [H, W] as a float tensor [1, H, W] in [-1, 1]: white paper +1, strokes -1."""
    import torch

    array = np.asarray(sketch)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise BadInputError(f"a sketch must be a uint8 [H, W] array, got {array.dtype} {array.shape}")
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0)[None]


def is_blank_sketch(sketch, min_ink: int | None = None) -> bool:
    """True when a uint8 sketch ([H, W] or [H, W, C]) holds no strokes worth a query.

    Blank means fewer than `min_ink` ink pixels (darker than 128; default max(4, 0.05 % of the
    pixels)), or fewer than that many paper pixels: a uniformly dark canvas has no lines either.
    """
    array = np.asarray(sketch)
    if array.ndim == 3:
        array = array.min(axis=2)  # any dark channel counts as ink
    if array.ndim != 2:
        raise BadInputError(f"a sketch must be an [H, W] or [H, W, C] image, got shape {array.shape}")
    need = max(4, int(0.0005 * array.size)) if min_ink is None else min_ink
    ink = int((array < INK_LEVEL).sum())
    return ink < need or array.size - ink < need
