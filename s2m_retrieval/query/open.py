"""Opening a retrieval engine: the models, the perceptual metric, and the checks that they built the index."""

from __future__ import annotations

import os

from index.stamp import IndexStamp
from s2m_retrieval.errors import CheckpointError, IndexCorruptError, VersionMismatchError
from s2m_retrieval.query.index_reader import IndexReader
from s2m_retrieval.model.inverter_encoder import FORMAT, InverterEncoder
from s2m_retrieval.model.latent_space import LatentWeighting
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.model.pipeline import Sketch2MedI


def load_pipeline(models: str | os.PathLike | None, device: str = "cpu") -> Sketch2MedI:
    """G, E, the inverter and (when present) H and the projector from a models folder, else from the shipped
    weights."""
    from s2m_retrieval.model.files import model_files

    files = model_files(models, ("generator", "encoder", "inverter"), "retrieval with sketches")
    return Sketch2MedI.from_checkpoints(generator=files["generator"], encoder=files["encoder"],
                                        refiner=files["refiner"], inverter=files["inverter"], perceptual=None,
                                        device=device, projector=files["projector"])


def stored_config(reader: IndexReader, *, cli: bool = True) -> dict:
    """The inverter settings the index was built with (its model_versions row); other encoders are a mismatch
    (`cli`: the hint names the CLI's --db, else the Python API's db_url)."""
    from s2m_retrieval.storage.catalog import model_config

    stamp = reader.stamp
    if stamp.model_name != InverterEncoder.name:
        raise VersionMismatchError(f"index {stamp.name!r} was built with the {stamp.model_name!r} encoder "
                                   f"(model version {stamp.model_version}), not the Sketch2MedI inverter; "
                                   f"rebuild it: {stamp.rebuild_hint()}")
    with reader.db.session() as s:
        config = model_config(s, stamp.model_version)
    if not isinstance(config, dict) or config.get("encoder") != FORMAT:
        db = "--db" if cli else "db_url"
        raise IndexCorruptError(f"index {stamp.name!r}: the database has no {FORMAT} record of model version "
                                f"{stamp.model_version} (another {db} than the build's?); rebuild it: "
                                f"{stamp.rebuild_hint()}")
    return config


def load_metric(name: str | PerceptualDistance | None, stamp: IndexStamp, models: str | os.PathLike | None,
                device: str = "cpu") -> PerceptualDistance:
    """The perceptual metric `name` (a backend, or one already loaded), by default the backend the index was
    built for; another version than the index's raises."""
    from s2m_retrieval.model.files import segmenter_file
    from s2m_retrieval.model.perceptual import SEG_BACKENDS, load_perceptual

    if isinstance(name, PerceptualDistance):
        metric = name
    else:
        backend = name or stamp.metric.split(":")[0]
        metric = load_perceptual(backend, device,
                                 checkpoint=segmenter_file(models) if backend in SEG_BACKENDS else None)
    if metric.version != stamp.metric:
        raise VersionMismatchError(f"index {stamp.name!r} was built for perceptual metric {stamp.metric}, the "
                                   f"metric in use is {metric.version}; rebuild it ({stamp.rebuild_hint()}) or "
                                   f"query with the metric it was built for")
    return metric


def index_encoder(pipeline: Sketch2MedI, metric: PerceptualDistance, config: dict, stamp: IndexStamp,
                  device: str = "cpu", home: str | os.PathLike | None = None, *, cli: bool = True) -> InverterEncoder:
    """The encoder that built the index, rebuilt from the loaded models; different models raise a mismatch that
    names the known bundles (under `home`) holding the index's models (`cli`: as --model, else as models=)."""
    if pipeline.inverter is None:
        raise CheckpointError("retrieval needs the archive inverter that built the index: load inverter.pt too")
    built = {k: config.get(k) for k in ("generator", "inverter")}
    loaded = {k: pipeline.versions.get(k) for k in ("generator", "inverter")}
    if built != loaded:
        from s2m_retrieval.model.bundle import bundles_with

        def show(v):
            return " and ".join(f"{k} {v[k]}" for k in v)
        names = bundles_with(built, home)
        use = ((f"query with --model {names[0]}" if cli else f"open it with models={names[0]!r}") if names
               else "load the models it was built with")
        raise VersionMismatchError(f"index {stamp.name!r} was built with {show(built)}"
                                   + (f" (model bundle {', '.join(repr(n) for n in names)})" if names else "")
                                   + f", the loaded models are {show(loaded)}; {use}, or rebuild it with these "
                                   f"models ({stamp.rebuild_hint()} --model ...)")
    projector, versions = None, dict(loaded)
    if config.get("projector") is not None:  # the index's space: built through a projector, searched through it
        have = pipeline.versions.get("projector")
        if have != config["projector"]:
            raise VersionMismatchError(
                f"index {stamp.name!r} stores vectors of projector {config['projector']}, the loaded models "
                + (f"have projector {have}" if have else "have no projector.pt")
                + f"; query with the model bundle it was built with, or rebuild it ({stamp.rebuild_hint()})")
        projector, versions["projector"] = pipeline.projector, have
    encoder = InverterEncoder(pipeline.G, pipeline.inverter, metric, versions=versions,
                              weighting=LatentWeighting.from_dict(config["weighting"]),
                              iterations=config["iterations"], optimise_steps=config["optimise_steps"],
                              fit=config.get("fit", "crop"), device=device, projector=projector)
    stamp.check(model_version=encoder.version, metric=encoder.metric, dim=encoder.dim)
    if encoder.weighting != stamp.weighting:
        raise IndexCorruptError(f"index {stamp.name!r}: stamp weighting {stamp.weighting} disagrees with its model "
                                f"record {encoder.weighting}; rebuild it: {stamp.rebuild_hint()}")
    return encoder
