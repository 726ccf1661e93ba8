"""`s2m serve`: open the engine once, then serve the HTTP API and the sketch page with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cli.models import MODEL_HELP
from cli.runtime import DEVICE_HELP

DEFAULT_PORT = 8000


def serve(
    index: str = typer.Option("default", "--index", "--name", help="Index name (a folder under HOME/indexes/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port."),
    token: str = typer.Option(None, "--token", envvar="S2M_SERVE_TOKEN",
                              help="Clients must send 'Authorization: Bearer TOKEN' to /v1 and /metrics (prefer the "
                                   "env var: a command line is visible to other users)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve a non-local --host without a token."),
    concurrency: int = typer.Option(2, "--concurrency", help="Queries (or batches) computing at once (others queue)."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: CPU cores / --concurrency)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Sketch queries in one forward of the models (1: each "
                                                          "query alone, no batching)."),
    batch_wait_ms: int = typer.Option(5, "--batch-wait-ms", help="How long a sketch query waits for others to join "
                                                                 "its batch (a busy server batches what queued)."),
    max_upload_kb: int = typer.Option(4096, "--max-upload-kb", help="Largest sketch file accepted (413 above)."),
    max_pixels: int = typer.Option(2048 * 2048, "--max-pixels", help="Largest sketch in pixels (413 above)."),
    perceptual: str = typer.Option(None, "--perceptual", help="Perceptual metric (default: the one of the index)."),
    home: Path = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m)."),
    db: str = typer.Option(None, "--db", envvar="S2M_DB_URL", help="Database URL (default: SQLite HOME/s2m.db)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: debug, info, warning, error."),
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
) -> None:
    """Serve the retrieval API (/v1, OpenAPI at /openapi.json), /metrics and the sketch page at /."""
    from s2m_retrieval.errors import BadInputError, S2MError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise S2MError(f"s2m serve needs the service extra ({exc.name} is missing): "
                       "pip install 's2m-retrieval[service]'") from None
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise BadInputError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    if max_upload_kb < 1 or max_pixels < 1:
        raise BadInputError(f"--max-upload-kb and --max-pixels must be >= 1, got {max_upload_kb} and {max_pixels}")
    from s2m_retrieval.model.bundle import resolve_model
    from s2m_retrieval.service.server import check_bind

    check_bind(host, token, no_auth)
    models = resolve_model(model, home)
    from s2m_retrieval.service import ServiceLimits

    limits = ServiceLimits(max_upload_bytes=max_upload_kb * 1024, max_pixels=max_pixels, concurrency=concurrency,
                           max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    from cli.runtime import setup_torch

    # Concurrent queries share the cores: one intra-op pool per query would oversubscribe them.
    device = setup_torch(threads or max(1, (os.cpu_count() or 1) // concurrency), device)
    from s2m_retrieval.query.engine import RetrievalEngine
    from s2m_retrieval.service import create_app
    from s2m_retrieval.service.server import base_url, listen
    from s2m_retrieval.service.server import serve as run_server

    sock = listen(host, port)  # before the models load: a taken port fails fast
    try:
        with RetrievalEngine.open(index, home=home, db_url=db, models=models, perceptual=perceptual,
                                  device=device) as engine:
            app = create_app(engine, limits, token=token)
            typer.echo(f"serving index {index!r} ({engine.reader.store.ntotal} images) at {base_url(sock)}/ "
                       f"({'token required' if token else 'no token'}; Ctrl-C stops)")
            try:
                run_server(app, sock, log_level=log_level)
            except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C (or returned)
                pass
            typer.echo("stopped")
    finally:
        sock.close()
