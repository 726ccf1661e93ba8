"""Perceptual distances with explicit, recorded backends: LPIPS (alex, vgg), the segmenter's features, random.

`seg-pool8` is the seg distance over features average-pooled to an 8x8 grid per layer and rounded to fp16: a
metric of its own (its own name and version in every index and result), small enough to store per archive image
(22 KiB at 64 px against 464 KiB for full seg features), so that a query computes features for x_hat alone.
Against exact `seg` on phantom images it keeps the order of 100 candidates with Spearman ~0.95 and ~80% of the
top 10 (benchmarks/bench_retrieval.py --precision).

`seg-dice` compares segmentations instead of features: the segmenter's class probabilities, pooled to 16x16
(3.5 KiB per image at 64 px, fp16), and 1 - the mean soft DICE over the anatomical structures (background
left out, V-Net's squared form so identical maps score 1): how well uvula, tonsils, tongue and the rest
overlap between x_hat and a candidate.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.errors import CheckpointError, PerceptualWeightsMissing, lookup

BACKENDS = ("seg", "lpips-alex", "lpips-vgg", "seg-pool8", "seg-dice", "random")
SEG_BACKENDS = ("seg", "seg-pool8", "seg-dice")  # the backends built on a segmenter checkpoint
POOLED_GRID = {"seg-pool8": 8, "seg-dice": 16}   # cacheable backends: side of the grid every layer is pooled to
DEFAULT_BACKEND = "seg"  # the only one that needs no download: trained here, shipped as package data

# torchvision's ImageNet checkpoints that lpips builds its trunks from (torchvision.models.*_Weights.IMAGENET1K_V1).
TORCHVISION_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/"


class PerceptualDistance(nn.Module):
    """LPIPS-style distance: unit-normalised features per layer, squared difference, (linear), spatial mean, sum."""

    def __init__(self, name: str, version: str, backbone: nn.Module, linear: nn.ModuleList | None = None,
                 pool: int | None = None) -> None:
        super().__init__()
        self.name = name          # the backend, e.g. "seg"
        self.version = version    # backend + weights stamp, what indexes and results record
        self.backbone = backbone  # images [N, 3, H, W] in [-1, 1] -> list of [N, C_k, H_k, W_k]
        self.linear = linear      # per-layer 1x1 conv to one channel (LPIPS' learned weights) or None
        self.pool = pool          # features average-pooled to pool x pool and rounded to fp16 (cacheable), or None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualDistance":
        # A metric never trains: dropout in lpips' linear layers must stay off even inside a training loop.
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature maps of images [N, 3, H, W] in [-1, 1], one per layer (cacheable)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual distance expects images [N, 3, H, W], got {list(x.shape)}")
        feats = [f * torch.rsqrt(f.square().sum(dim=1, keepdim=True) + 1e-10) for f in self.backbone(x)]
        if self.pool is None:
            return feats
        # Rounded to fp16 here, not only when stored: a query's features then equal what a cache holds.
        return [(F.adaptive_avg_pool2d(f, self.pool) if f.shape[-1] > self.pool or f.shape[-2] > self.pool else f)
                .half().float() for f in feats]

    @property
    def cacheable(self) -> bool:
        """Whether `pack`/`unpack` store this metric's features per image (pooled backends only)."""
        return self.pool is not None

    def pack(self, feats: list[torch.Tensor]) -> np.ndarray:
        """Features of N images (from `features`) -> one fp16 row per image [N, D], what index shards store."""
        if not self.cacheable:
            raise ValueError(f"perceptual metric {self.name} has no compact features to store")
        return torch.cat([f.flatten(1) for f in feats], dim=1).half().cpu().numpy()

    def unpack(self, rows: np.ndarray, shapes: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Stored rows [N, D] fp16 -> feature list for `distance_from_features`; `shapes` are [C, H, W] per layer."""
        sizes = [c * h * w for c, h, w in shapes]
        if rows.ndim != 2 or rows.shape[1] != sum(sizes):
            raise ValueError(f"stored {self.name} features have shape {rows.shape}, expected [N, {sum(sizes)}]")
        flat = torch.from_numpy(np.ascontiguousarray(rows)).float().to(next(self.parameters()).device)
        return [part.reshape(len(rows), *shape) for part, shape in zip(flat.split(sizes, dim=1), shapes)]

    def distance_from_features(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """Per-pair distance [N] from two feature lists; a batch of 1 broadcasts against N."""
        total = 0.0
        for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
            diff = (a - b).square()                                      # [N, C_k, H_k, W_k]
            diff = self.linear[k](diff) if self.linear is not None else diff.sum(dim=1, keepdim=True)
            total = total + diff.mean(dim=(1, 2, 3))
        return total

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pair distance [N] between images x and y [N, 3, H, W] in [-1, 1]."""
        return self.distance_from_features(self.features(x), self.features(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(x, y)


class SegmentationOverlap(PerceptualDistance):
    """`seg-dice`: 1 - mean soft DICE of the segmenter's pooled class probabilities over the structures."""

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual distance expects images [N, 3, H, W], got {list(x.shape)}")
        probs = self.backbone(x).softmax(dim=1)[:, 1:]                    # [N, classes - 1, H, W], no background
        return [F.adaptive_avg_pool2d(probs, self.pool).half().float()]

    def distance_from_features(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        (a,), (b,) = fx, fy
        # V-Net's soft DICE (squares in the denominator): exactly 1 for identical maps, soft or not.
        overlap = (a * b).sum(dim=(2, 3))                                # [N, classes - 1]
        total = a.square().sum(dim=(2, 3)) + b.square().sum(dim=(2, 3))
        present = total > 1e-3          # a structure neither image has is no evidence either way
        dice = torch.where(present, 2 * overlap / total.clamp_min(1e-6), torch.zeros_like(total))
        return 1 - dice.sum(1) / present.sum(1).clamp_min(1)


class _LpipsTrunk(nn.Module):
    """lpips' input scaling and ImageNet trunk, returning its five relu outputs."""

    def __init__(self, scaling: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.scaling = scaling
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(self.scaling(x)))


class _SegmenterEncoder(nn.Module):
    """The down-sampling half of the segmenter U-Net: one feature map per level."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.stem = segmenter.stem
        self.down = segmenter.down
        self.multiple = 2 ** segmenter.config.depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"the seg perceptual distance needs sides that are multiples of {self.multiple}, "
                             f"got {list(x.shape[-2:])}")
        feats = [self.stem(x)]                                           # [N, c0, H, W]
        for block in self.down:
            feats.append(block(F.max_pool2d(feats[-1], 2)))              # halves H, W per level
        return feats


class _RandomTrunk(nn.Module):
    """Three random strided convs: a stand-in backbone for plumbing tests, meaningless as a metric."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.convs = nn.ModuleList([nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1),
                                        nn.Conv2d(32, 32, 3, 2, 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return feats


def torchvision_weights_path(net: str) -> Path:
    """Where torchvision looks for the ImageNet trunk of lpips `net` ("alex" or "vgg"): $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]


def _load_lpips(net: str, device: torch.device) -> PerceptualDistance:
    import importlib.util

    trunk_path = torchvision_weights_path(net)
    spec = importlib.util.find_spec("lpips")  # locate without importing: the import costs seconds
    if spec is None or spec.origin is None:
        raise PerceptualWeightsMissing(f"lpips-{net} needs the lpips package: pip install lpips")
    lin_path = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    name = f"lpips-{net}"
    if not trunk_path.is_file():
        raise PerceptualWeightsMissing(
            f"{name} needs torchvision's ImageNet weights: place {trunk_path.name} (from {TORCHVISION_URL}"
            f"{trunk_path.name}) in {trunk_path.parent}/ (set TORCH_HOME to move it), or use the offline 'seg' backend")
    if not lin_path.is_file():
        raise PerceptualWeightsMissing(f"{name} needs the lpips package's linear weights {lin_path}; "
                                       "reinstall lpips (pip install --force-reinstall lpips)")
    damaged = (f"{name} weights {trunk_path} or {lin_path} are damaged ({{}}); "
               f"download {TORCHVISION_URL}{trunk_path.name} again or reinstall lpips")
    try:  # read both files before building anything: a bad file fails fast
        trunk_state = torch.load(trunk_path, map_location="cpu", weights_only=True)
        lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise PerceptualWeightsMissing(damaged.format(type(exc).__name__)) from exc
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated `pretrained` flag
        # pnet_rand/pretrained off: lpips must not download or read anything; the files are loaded below.
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    try:
        # lpips splits torchvision's `features` Sequential into slices that keep the original indices.
        wanted = {}
        for key in model.net.state_dict():
            _, index, param = key.split(".")
            wanted[key] = trunk_state[f"features.{index}.{param}"]
        model.net.load_state_dict(wanted)
        unexpected = model.load_state_dict(lin_state, strict=False).unexpected_keys
        if unexpected:
            raise KeyError(unexpected[0])
    except (KeyError, RuntimeError) as exc:
        raise PerceptualWeightsMissing(damaged.format(f"{type(exc).__name__}: {str(exc)[:80]}")) from exc
    return PerceptualDistance(name, f"{name}:v0.1", _LpipsTrunk(model.scaling_layer, model.net),
                              nn.ModuleList(model.lins)).to(device)


def _load_seg(checkpoint: str | os.PathLike | None, device: torch.device, name: str = "seg") -> PerceptualDistance:
    from s2m_retrieval.networks.checkpoint import config_from_dict, load_checkpoint, version_hash
    from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
    from s2m_retrieval.model.segmentation import segmenter_path

    payload = load_checkpoint(segmenter_path(checkpoint), kind="segmenter")
    try:
        segmenter = Segmenter(config_from_dict(SegmenterConfig, payload["config"]))
        segmenter.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"segmenter checkpoint does not rebuild a Segmenter ({str(exc)[:120]})") from exc
    if name == "seg-dice":
        return SegmentationOverlap(name, f"{name}:{version_hash(payload)}", segmenter.eval(),
                                   pool=POOLED_GRID[name]).to(device)
    return PerceptualDistance(name, f"{name}:{version_hash(payload)}", _SegmenterEncoder(segmenter),
                              pool=POOLED_GRID.get(name)).to(device)


def _load_random(checkpoint, device: torch.device, name: str) -> PerceptualDistance:
    return PerceptualDistance("random", "random:0", _RandomTrunk(0)).to(device)


# name -> loader(checkpoint, device, name); the seg backends read a segmenter checkpoint.
LOADERS = {"seg": _load_seg, "lpips-alex": lambda c, d, n: _load_lpips("alex", d),
           "lpips-vgg": lambda c, d, n: _load_lpips("vgg", d), "seg-pool8": _load_seg, "seg-dice": _load_seg,
           "random": _load_random}


def load_perceptual(name: str = DEFAULT_BACKEND, device: str | torch.device = "cpu",
                    checkpoint: str | os.PathLike | None = None) -> PerceptualDistance:
    """The perceptual distance `name` (one of BACKENDS); `checkpoint` picks a segmenter for the SEG_BACKENDS."""
    return lookup(LOADERS, name, "perceptual distance")(checkpoint, torch.device(device), name)
