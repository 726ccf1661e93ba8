"""`s2m train ...`: train the networks on an archive, resumable, with progress bars."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train the networks (segmenter, generator, ...) on an archive.", no_args_is_help=True)
