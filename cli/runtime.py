"""What the commands share: torch threads and device choice (checked before any work starts), options
declared once for several commands."""

from __future__ import annotations

# What `setup_torch` accepts for --device, said once for every command's help.
DEVICE_HELP = "auto (cuda when a GPU is there, else cpu), cpu, cuda or cuda:N (GPU N)."


def setup_torch(threads: int = 0, device: str = "auto") -> str:
    """Set torch's CPU threads (0: keep torch's default) and resolve `device` (auto, cpu, cuda[:N])."""
    import torch

    from s2m_retrieval.errors import BadInputError

    if threads < 0:
        raise BadInputError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        return device
    raise BadInputError(f"--device must be auto, cpu or cuda[:N], got {device!r}")


def shared_options(table: dict):
    """A decorator: the command's keyword-only parameters without defaults get their (annotation, typer option)
    from `table`, so options several commands take alike are declared once (`*, home, db, ...`)."""
    import inspect

    def wrap(func):
        params = []
        for param in inspect.signature(func, eval_str=True).parameters.values():
            if param.kind is param.KEYWORD_ONLY and param.default is param.empty:
                annotation, option = table[param.name]
                param = param.replace(default=option, annotation=annotation)
            params.append(param)
        func.__signature__ = inspect.signature(func).replace(parameters=params)
        return func

    return wrap
