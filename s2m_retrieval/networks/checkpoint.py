"""The one checkpoint format (`s2m/1`): config dict + state_dict + w_avg + meta, no pickled code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from s2m_retrieval.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT = "s2m/1"
STATE_FORMAT = "s2m-train/1"  # a training run's latest.pt (training/state.py), told apart from a checkpoint here

C = TypeVar("C")


def config_to_dict(config: Any) -> dict:
    """A frozen dataclass config as a plain dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Rebuild a dataclass config, turning lists back into tuples where the field is a tuple."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise CheckpointError(f"checkpoint config has unknown fields {sorted(unknown)} for {cls.__name__}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: Any, state_dict: dict,
                    w_avg: Any = None, meta: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename) and return its path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": config_to_dict(config) if dataclasses.is_dataclass(config) else dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "w_avg": None if w_avg is None else w_avg.detach().cpu(),
        "meta": meta or {},
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared read-only data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> dict:
    """Load a checkpoint with `weights_only=True`; a bad file raises CheckpointError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise not_a_checkpoint_file(path, kind, f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or not an s2m checkpoint "
                              f"({type(exc).__name__} while reading it)") from exc
    if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
        # A run folder's latest.pt: the checkpoint its training writes lies beside it.
        kinds = [kind, {"index_encoder": "encoder"}.get(payload.get("kind"), payload.get("kind") or "generator")]
        beside = next((path.parent / f"{k}.pt" for k in kinds if k and (path.parent / f"{k}.pt").is_file()), None)
        raise CheckpointError(f"{path} is a training state (the resume file of `s2m train`), not a checkpoint"
                              + (f"; pass {beside}" if beside is not None else
                                 "; the checkpoint is written beside it when the training finishes"))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not in format {FORMAT}")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds {_with_article(payload.get('kind'))}, expected "
                              f"{_with_article(kind)}")
    return payload


def not_a_checkpoint_file(path: Path, kind: str | None, missing: str) -> CheckpointError:
    """The error for a checkpoint path that is no file: a folder is named as one (with the checkpoint of `kind` in
    it, when there is one), anything else gets the `missing` message."""
    if not path.is_dir():
        return CheckpointError(missing)
    inside = path / f"{kind}.pt" if kind else None
    return CheckpointError(f"{path} is a folder, not a checkpoint"
                           + (f"; pass {inside}" if inside is not None and inside.is_file() else ""))


def _with_article(kind) -> str:
    """A checkpoint kind quoted after its article: "an 'encoder'", "a 'unit'" (unit and ugatit say "you")."""
    return f"{'an' if str(kind)[:1] in 'aeio' else 'a'} {kind!r}"


def read_payload(path_or_payload: str | os.PathLike | dict, kind: str) -> dict:
    """A checkpoint payload of `kind`, from a file or an already loaded dict."""
    if isinstance(path_or_payload, dict):
        if path_or_payload.get("kind") != kind:
            raise CheckpointError(f"checkpoint holds {_with_article(path_or_payload.get('kind'))}, expected "
                                  f"{_with_article(kind)}")
        return path_or_payload
    return load_checkpoint(path_or_payload, kind=kind)


def rebuild_module(payload: dict, config_cls: type, module_cls: type):
    """The module a payload describes: its config rebuilt, its weights loaded (CheckpointError if they don't fit)."""
    import torch

    from s2m_retrieval.errors import BadInputError

    bad = next((name for name, t in payload.get("state_dict", {}).items()
                if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise CheckpointError(f"the {payload.get('kind')} checkpoint holds non-finite weights ({bad}): its training "
                              "diverged; retrain it with a lower learning rate")
    try:
        module = module_cls(config_from_dict(config_cls, payload["config"]))
        module.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, BadInputError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{payload.get('kind')} checkpoint does not rebuild a {module_cls.__name__} "
                              f"({first[:160]})") from exc
    return module


def version_hash(payload: dict) -> str:
    """A short stable hash of a checkpoint's config and weights (the model version stamp)."""
    h = hashlib.sha256()
    h.update(json.dumps(payload["config"], sort_keys=True).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name]
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_lineage(payloads: dict[str, dict | None], versions: dict[str, str | None],
                  deps: dict[str, tuple[str, ...]]) -> None:
    """Each loaded checkpoint against the versions of the networks it was trained with: `<dep>_version` in its
    meta, for every dep named in `deps[name]` (absent networks and unrecorded versions are not checked)."""
    for name, payload in payloads.items():
        trained_on = {} if payload is None else payload.get("meta", {})
        for dep in deps.get(name, ()):
            want = trained_on.get(f"{dep}_version")
            if dep != name and want is not None and want != versions.get(dep):
                raise CheckpointError(f"the {name} was trained against {dep} {want}, not the loaded "
                                      f"{versions.get(dep)}; load matching checkpoints or retrain the {name}")


def shipped_weights(name: str) -> Path:
    """Path of a weights file shipped as package data (`s2m_retrieval/weights/<name>.pt`)."""
    return Path(__file__).resolve().parents[1] / "weights" / f"{name}.pt"


def model_version(module: torch.nn.Module) -> str:
    """The version stamp a checkpoint of `module` (with its `.config`) would get from `version_hash`."""
    return version_hash({"config": config_to_dict(module.config),
                         "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}})


def load_network(path_or_payload, kind: str, config_cls, module_cls, device="cpu"):
    """Rebuild a network (eval mode, frozen) from a checkpoint of `kind`: config dict + state_dict, no pickled code."""
    module = rebuild_module(read_payload(path_or_payload, kind), config_cls, module_cls)
    return module.to(device).eval().requires_grad_(False)
