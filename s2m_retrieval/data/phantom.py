"""Procedural pharyngeal phantoms: throat photographs with exact label maps and clinical labels."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from s2m_retrieval.data.classes import BACKGROUND, FOLLICLES, PALATE, TONGUE, TONSILS, UVULA, WALL

SUPPORTED_SIZES = (32, 64, 128, 256)

# How far each Brodsky grade pushes a tonsil's medial edge from the pillar towards the midline,
# as a fraction of the oropharyngeal half-width (0: removed, 1: within pillars, 4: > 75 %).
_TONSIL_REACH = {0: 0.0, 1: 0.10, 2: 0.36, 3: 0.62, 4: 0.86}
# Tongue dorsum height (normalised y, down is positive) per Mallampati class.
_TONGUE_TOP = {1: 0.56, 2: 0.40, 3: 0.20, 4: 0.02}

# Base colours (linear-ish RGB in [0, 1]) of the tissues before lighting.
_COLOURS = {
    "skin": (0.86, 0.66, 0.56), "lip": (0.74, 0.36, 0.36), "teeth": (0.93, 0.90, 0.82),
    "cavity": (0.10, 0.03, 0.03), PALATE: (0.86, 0.47, 0.46), UVULA: (0.90, 0.50, 0.50),
    TONSILS: (0.84, 0.38, 0.37), WALL: (0.78, 0.36, 0.35), TONGUE: (0.86, 0.52, 0.52),
    FOLLICLES: (0.93, 0.52, 0.48),
}


@dataclass(frozen=True)
class PhantomParams:
    """Everything that defines one phantom; the clinical fields become labels.csv columns."""

    tonsil_grade: int
    mallampati: int
    follicles: int
    uvula_length: float
    uvula_deviation: float
    uvula_width: float
    tongue_height: float
    redness: float
    arch_top: float
    arch_half_width: float
    arch_curvature: float
    wall_fraction: float
    tonsil_asymmetry: float
    mouth_rx: float
    mouth_ry: float
    rotation_deg: float
    scale: float
    shift_x: float
    shift_y: float
    light_x: float
    light_y: float
    light_spread: float
    exposure: float
    white_balance: tuple[float, float, float]
    blur_px: float
    noise_std: float
    follicle_spots: tuple[tuple[float, float, float], ...]
    highlight_spots: tuple[tuple[float, float, float], ...]
    texture_seed: int

    def labels(self) -> dict[str, object]:
        """The clinical and acquisition labels written to labels.csv."""
        return {
            "tonsil_grade": self.tonsil_grade,
            "mallampati": self.mallampati,
            "follicles": self.follicles,
            "uvula_length": round(self.uvula_length, 4),
            "uvula_deviation": round(self.uvula_deviation, 4),
            "tongue_height": round(self.tongue_height, 4),
            "redness": round(self.redness, 4),
            "exposure": round(self.exposure, 4),
            "blur_px": round(self.blur_px, 4),
        }


def sample_params(rng: np.random.Generator) -> PhantomParams:
    """Draw one phantom's anatomy, appearance and framing."""
    grade = int(rng.choice(5, p=[0.10, 0.25, 0.30, 0.20, 0.15]))
    mallampati = int(rng.choice([1, 2, 3, 4], p=[0.30, 0.30, 0.25, 0.15]))
    follicles = int(rng.random() < 0.35)
    arch_top = float(rng.uniform(-0.58, -0.38))
    half_width = float(rng.uniform(0.40, 0.58))
    wall_fraction = float(rng.uniform(0.62, 0.82))
    spots = []
    if follicles:
        for _ in range(int(rng.integers(3, 10))):
            spots.append((float(rng.uniform(-0.8, 0.8) * half_width * wall_fraction),
                          float(arch_top + rng.uniform(0.15, 0.75)),
                          float(rng.uniform(0.028, 0.055))))
    highlights = tuple((float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.3, 0.9)),
                        float(rng.uniform(0.02, 0.05))) for _ in range(int(rng.integers(2, 6))))
    return PhantomParams(
        tonsil_grade=grade,
        mallampati=mallampati,
        follicles=follicles,
        uvula_length=float(rng.uniform(0.20, 0.46)),
        uvula_deviation=float(np.clip(rng.normal(0, 0.06), -0.16, 0.16)),
        uvula_width=float(rng.uniform(0.065, 0.095)),
        tongue_height=float(_TONGUE_TOP[mallampati] + rng.normal(0, 0.035)),
        redness=float(rng.beta(2.0, 2.5)),
        arch_top=arch_top,
        arch_half_width=half_width,
        arch_curvature=float(rng.uniform(0.9, 1.8)),
        wall_fraction=wall_fraction,
        tonsil_asymmetry=float(rng.uniform(-0.12, 0.12)),
        mouth_rx=float(rng.uniform(0.84, 0.98)),
        mouth_ry=float(rng.uniform(0.80, 0.94)),
        rotation_deg=float(rng.uniform(-8, 8)),
        scale=float(rng.uniform(0.90, 1.12)),
        shift_x=float(rng.uniform(-0.07, 0.07)),
        shift_y=float(rng.uniform(-0.07, 0.07)),
        light_x=float(rng.normal(0, 0.2)),
        light_y=float(rng.normal(0.05, 0.2)),
        light_spread=float(rng.uniform(0.45, 0.95)),
        exposure=float(rng.uniform(0.75, 1.2)),
        white_balance=tuple(float(x) for x in 1 + rng.normal(0, 0.05, 3)),
        blur_px=float(rng.uniform(0.0, 1.1)),
        noise_std=float(rng.uniform(0.0, 0.035)),
        follicle_spots=tuple(spots),
        highlight_spots=highlights,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _grid(size: int, p: PhantomParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image-plane coordinates and canonical anatomy coordinates (inverse camera transform)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    a = math.radians(p.rotation_deg)
    xs, ys = (x - p.shift_x) / p.scale, (y - p.shift_y) / p.scale
    u = math.cos(a) * xs + math.sin(a) * ys
    v = -math.sin(a) * xs + math.cos(a) * ys
    return x, y, u, v


def _ellipse(u, v, cx, cy, rx, ry):
    """Normalised squared radius of an ellipse (< 1 inside)."""
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2


def _dome(r2):
    """Height of a unit dome over a normalised squared radius: 1 at the centre, 0 at the rim."""
    return np.sqrt(np.clip(1 - r2, 0, 1))


def rasterize(p: PhantomParams, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Label map `[S, S]` uint8, a shading height map and the canonical/image coordinates."""
    x, y, u, v = _grid(size, p)
    label = np.full((size, size), BACKGROUND, np.uint8)
    height = np.zeros((size, size), np.float32)

    mouth_r2 = _ellipse(u, v, 0, 0.05, p.mouth_rx, p.mouth_ry)
    mouth = mouth_r2 < 1
    arch_edge = p.arch_top + p.arch_curvature * u**2
    side = p.arch_half_width * (1 + 0.18 * np.clip(v - p.arch_top, 0, None))
    opening = mouth & (v > arch_edge) & (np.abs(u) < side)
    # Upper teeth line the top rim of the mouth; the cosine separates the crowns.
    teeth_band = mouth & (mouth_r2 > 0.70 + 0.06 * np.cos(u * 22)) & (v < p.arch_top - 0.08)

    label[mouth] = PALATE
    height[mouth] = 0.6 * np.clip((v[mouth] - p.arch_top + 0.5), 0, 1)
    label[opening] = BACKGROUND  # the dark depth of the isthmus

    wall_side = side * p.wall_fraction
    wall = opening & (np.abs(u) < wall_side) & (v > arch_edge + 0.06)
    label[wall] = WALL
    height[wall] = 0.25 * _dome((u[wall] / wall_side[wall]) ** 2)
    for fx, fy, fr in p.follicle_spots:
        r2 = _ellipse(u, v, fx, fy, fr, fr)
        spot = wall & (r2 < 1)
        label[spot] = FOLLICLES
        height[spot] += 0.3 * _dome(r2[spot])

    reach = _TONSIL_REACH[p.tonsil_grade]
    if reach > 0:
        ty = p.arch_top + 0.55 + 0.1 * p.arch_curvature
        for sign, asym in ((-1, 1 + p.tonsil_asymmetry), (1, 1 - p.tonsil_asymmetry)):
            medial = p.arch_half_width * (1 - min(0.97, reach * asym))
            rx = 0.08 + 0.55 * reach * p.arch_half_width
            ry = 0.16 + 0.16 * reach
            r2 = _ellipse(u, v, sign * (medial + rx), ty, rx, ry)
            tonsil = (r2 < 1) & (opening | (np.abs(u) < side + 0.03) & mouth & (v > arch_edge))
            label[tonsil] = TONSILS
            height[tonsil] = 0.4 + 0.6 * _dome(r2[tonsil])

    if p.uvula_length > 0:
        bx, by = 0.0, p.arch_top - 0.03
        tx, ty2 = p.uvula_deviation, p.arch_top + p.uvula_length
        dx, dy = tx - bx, ty2 - by
        t = np.clip(((u - bx) * dx + (v - by) * dy) / (dx * dx + dy * dy), 0, 1)
        dist = np.hypot(u - (bx + t * dx), v - (by + t * dy))
        radius = p.uvula_width * (1 - 0.3 * t + 0.55 * np.clip((t - 0.55) / 0.45, 0, 1))
        uvula = mouth & (dist < radius) & (v > p.arch_top - 0.2)
        label[uvula] = UVULA
        height[uvula] = 0.5 + 0.5 * _dome((dist[uvula] / radius[uvula]) ** 2)

    tongue_r2 = _ellipse(u, v, 0, p.tongue_height + 0.95, 1.05, 0.95)
    tongue = mouth & (tongue_r2 < 1)
    label[tongue] = TONGUE
    groove = 0.25 * np.exp(-(u[tongue] / 0.05) ** 2) * np.clip((v[tongue] - p.tongue_height) * 3, 0, 1)
    height[tongue] = 0.7 + 0.5 * _dome(tongue_r2[tongue]) - groove

    regions = {"x": x, "y": y, "u": u, "v": v, "mouth": mouth, "mouth_r2": mouth_r2,
               "teeth": teeth_band & ~tongue & (label == PALATE), "opening": opening}
    return label, height, regions


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))


def render(p: PhantomParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom: RGB uint8 `[S, S, 3]` and its label map uint8 `[S, S]`."""
    label, height, reg = rasterize(p, size)
    rng = np.random.default_rng(p.texture_seed)
    rgb = np.empty((size, size, 3), np.float32)

    palette = np.zeros((8, 3), np.float32)
    for k in (PALATE, UVULA, TONSILS, WALL, TONGUE, FOLLICLES):
        palette[k] = _COLOURS[k]
    palette[BACKGROUND] = _COLOURS["cavity"]
    # Inflamed tissue is redder and darker in green/blue; pale mucosa the opposite.
    palette[1:7, 1:] *= (1.25 - 0.55 * p.redness)
    rgb[:] = palette[label]

    outside = ~reg["mouth"]
    lip = outside & (reg["mouth_r2"] < 1.45)
    rgb[outside] = _COLOURS["skin"]
    rgb[lip] = _COLOURS["lip"]
    rgb[reg["teeth"]] = _COLOURS["teeth"]

    tissue = (label != BACKGROUND) | ~reg["mouth"]
    shade = np.where(tissue, 0.55 + 0.45 * np.clip(height, 0, 1.2), 1.0)
    shade[reg["teeth"]] = 1.3  # enamel reflects the flash far more than mucosa
    shade[label == WALL] *= 0.8  # the posterior wall lies deepest, furthest from the flash
    coarse = _smooth_noise(rng, size, 6)
    fine = _smooth_noise(rng, size, max(8, size // 4))
    texture = 1 + 0.08 * coarse + 0.06 * fine
    crypts = (label == TONSILS) & (fine < -0.55)
    texture[crypts] *= 0.75
    depth = np.where(label == BACKGROUND, 0.6 + 0.4 * np.clip(1 - np.abs(reg["u"]), 0, 1), 1.0)
    shade = shade * texture * np.where(reg["mouth"], depth, 1.0)

    x, y = reg["x"], reg["y"]
    flash = 0.35 + 0.65 * np.exp(-((x - p.light_x) ** 2 + (y - p.light_y) ** 2) / (2 * p.light_spread**2))
    rgb *= (shade * flash * p.exposure)[..., None]
    wet = (label == UVULA) | (label == TONSILS) | (label == TONGUE)
    glare = np.zeros((size, size), np.float32)
    for hx, hy, hr in p.highlight_spots:
        glare += np.exp(-((reg["u"] - hx) ** 2 + (reg["v"] - hy) ** 2) / (2 * hr**2))
    rgb += (0.5 * glare * wet)[..., None]
    rgb *= np.asarray(p.white_balance, np.float32)

    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    if p.blur_px > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(p.blur_px * size / 64))
    out = np.asarray(img, dtype=np.float32)
    if p.noise_std > 0:
        out = out + rng.normal(0, p.noise_std * 255, out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), label


def make_phantom(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, PhantomParams]:
    """Phantom number `index` of the archive with `seed`: same inputs, same pixels."""
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"phantom size must be one of {SUPPORTED_SIZES}, got {size}")
    params = sample_params(np.random.default_rng([seed, index]))
    image, label = render(params, size)
    return image, label, params


def params_dict(p: PhantomParams) -> dict:
    """All parameters of a phantom as plain data (for debugging and tests)."""
    return asdict(p)
