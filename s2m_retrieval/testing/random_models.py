"""Random-but-valid Sketch2MedI checkpoints (G, E, H, inverter, optionally the projector P) for tests and speed
benchmarks, never for results."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from s2m_retrieval.networks.checkpoint import save_checkpoint, version_hash
from s2m_retrieval.networks.encoders import Encoder, encoder_config_for
from s2m_retrieval.networks.refiner import Refiner, refiner_config_for
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig

# A 32 px G with few channels: every test query runs in milliseconds.
TINY_GENERATOR = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256,
                                 channel_max=16)
TINY_ENCODER = dict(widths=(8, 16, 16, 16), head_width=8)
TINY_REFINER = dict(widths=(8, 16), head_width=8, rank=2)


def _perturb_heads(module: torch.nn.Module, gen: torch.Generator, std: float) -> None:
    # Output heads start at zero (a fresh encoder maps every input to w_avg, a fresh H is the identity);
    # random non-zero heads make codes depend on the input, which retrieval tests need.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("linear.weight", "linear.bias", "to_a.weight", "to_a.bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def write_random_models(out_dir: str | os.PathLike, g_config: GeneratorConfig = TINY_GENERATOR, seed: int = 0,
                        encoder_kw: dict | None = None, refiner_kw: dict | None = None,
                        head_std: float = 0.05, projector_dim: int = 0,
                        projector_hidden: int = 0) -> Path:
    """Write generator.pt, encoder.pt, refiner.pt and inverter.pt with seeded random weights into `out_dir`, and
    projector.pt (a random retrieval space of `projector_dim` dims over the default weighting, heads with one
    hidden layer of `projector_hidden` units when that is > 0) when it is > 0.

    The inverter is ReStyle-shaped (image + current reconstruction); E, H and the inverter record the
    generator they belong to, as trained ones do. `encoder_kw` / `refiner_kw` default to tiny widths for
    the tiny G and to the shipped defaults otherwise.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiny = g_config == TINY_GENERATOR
    encoder_kw = dict(TINY_ENCODER if tiny else {}) if encoder_kw is None else encoder_kw
    refiner_kw = dict(TINY_REFINER if tiny else {}) if refiner_kw is None else refiner_kw
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(g_config).eval()
        E = Encoder(encoder_config_for(g_config, **encoder_kw))
        inverter = Encoder(encoder_config_for(g_config, in_channels=g_config.img_channels,
                                              extra_channels=g_config.img_channels, **encoder_kw))
        H = Refiner(refiner_config_for(G, **refiner_kw))
    with torch.no_grad():
        G.w_avg.copy_(G.mapping_network(torch.randn(1000, g_config.z_dim, generator=gen)).mean(0))
    for module, std in ((E, head_std), (inverter, head_std), (H, head_std / 5)):
        _perturb_heads(module, gen, std)
        if isinstance(module, Encoder):
            module.w_avg.copy_(G.w_avg)
    g_path = save_checkpoint(out / "generator.pt", kind="generator", config=g_config, state_dict=G.state_dict(),
                             w_avg=G.w_avg, meta={"random": True, "seed": seed})
    g_version = version_hash(torch.load(g_path, weights_only=True))
    meta = {"random": True, "seed": seed, "generator_version": g_version}
    e_path = save_checkpoint(out / "encoder.pt", kind="encoder", config=E.config, state_dict=E.state_dict(),
                             meta=meta)
    e_version = version_hash(torch.load(e_path, weights_only=True))
    i_path = save_checkpoint(out / "inverter.pt", kind="inverter", config=inverter.config,
                             state_dict=inverter.state_dict(), meta=meta)
    save_checkpoint(out / "refiner.pt", kind="refiner", config=H.config, state_dict=H.state_dict(),
                    meta={**meta, "encoder_version": e_version})
    if projector_dim > 0:
        from s2m_retrieval.model.latent_space import DEFAULT_WEIGHTING
        from s2m_retrieval.networks.projector import KIND, LatentProjector, ProjectorConfig

        config = ProjectorConfig(in_dim=DEFAULT_WEIGHTING.dim(G.num_ws, g_config.w_dim),
                                 weighting=DEFAULT_WEIGHTING.spec(), dim=projector_dim,
                                 hidden=projector_hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            P = LatentProjector(config)
        i_version = version_hash(torch.load(i_path, weights_only=True))
        save_checkpoint(out / "projector.pt", kind=KIND, config=config, state_dict=P.state_dict(),
                        meta={**meta, "encoder_version": e_version, "inverter_version": i_version})
    return out
