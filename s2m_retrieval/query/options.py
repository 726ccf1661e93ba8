"""The checks of a query's options (k, candidates, alpha, max_distance, normalisation, steps) and their limits.

Light on purpose (errors only, no numpy or torch): `s2m retrieve --server` runs the same checks before it asks the
server, and the engine and the service run them too.
"""

from __future__ import annotations

from s2m_retrieval.errors import BadInputError

# Upper bounds of one query, for the CLI and the HTTP API alike (a service's limits may only lower them).
MAX_K = 100
MAX_CANDIDATES = 1000
MAX_STEPS = 10
# How `ranking.normalise` maps distances over a candidate set (see `ranking`).
NORMALISATIONS = ("minmax", "rank", "zscore", "rrf")


def option_name(param: str, cli: bool) -> str:
    """How a message names a query option: the CLI's flag (`--max-distance`) or the Python parameter
    (`max_distance`), as the caller wrote it."""
    return "--" + param.replace("_", "-") if cli else param


def check_options(k: int, n_candidates: int, alpha: float, max_distance: float | None, how: str, *,
                  cli: bool = True) -> None:
    """Reject out-of-range query options with one line, before any model or index is opened (`cli`: the message
    names the CLI's flags, else the Python API's parameters)."""
    both = f"{option_name('k', cli)} and {option_name('candidates', cli)}"
    if k < 1 or n_candidates < 1:
        raise BadInputError(f"{both} must be >= 1, got {k} and {n_candidates}")
    if k > MAX_K or n_candidates > MAX_CANDIDATES:
        raise BadInputError(f"{both} may be at most {MAX_K} and {MAX_CANDIDATES}, got {k} and {n_candidates}")
    if not 0.0 <= alpha <= 1.0:
        raise BadInputError(f"{option_name('alpha', cli)} must be between 0 and 1, got {alpha}")
    if max_distance is not None and not max_distance >= 0:
        raise BadInputError(f"{option_name('max_distance', cli)} must be >= 0, got {max_distance}")
    if how not in NORMALISATIONS:
        raise BadInputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {how!r}")


def check_steps(steps: int | None, *, cli: bool = True) -> None:
    """Refinement steps T of a sketch query (None: H's trained T) must lie in 0..MAX_STEPS (`cli`: see
    `check_options`)."""
    if steps is not None and not 0 <= steps <= MAX_STEPS:
        raise BadInputError(f"{option_name('steps', cli)} must be between 0 and {MAX_STEPS}, got {steps}")
