"""`create_app(engine)`: the `/v1` API, `/healthz`, `/metrics` and the sketch page over an opened engine.

Queries run on a small thread pool of their own (`ServiceLimits.concurrency` at once, the rest queued), so the
event loop stays free for health checks, images and metrics while the models work. Sketch queries that arrive
close together share one forward of the models (`batching`; `max_batch` 1 answers each alone). Domain errors
become JSON `{"detail": "<one line>"}` with a 4xx/5xx status; tracebacks go to the server log only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from s2m_retrieval.errors import (BadInputError, DatabaseLockedError, ImageTooLargeError, IndexBusyError,
                                  IndexIncompleteError, S2MError, UnsupportedImageError, VersionMismatchError)
from s2m_retrieval.query.options import MAX_CANDIDATES, MAX_K, MAX_STEPS
from s2m_retrieval.service import views
from s2m_retrieval.service.views import ImageNotFound
from s2m_retrieval.service.batching import MAX_BATCH, MAX_BATCH_WAIT_MS, SketchBatcher, SketchQuery, Stopping
from s2m_retrieval.service.prometheus import UNMATCHED, ServiceMetrics
from s2m_retrieval.service.schemas import (ErrorOut, GenerateOptions, ImageMetaOut, IndexOut, OptionError,
                                           RetrieveOptions, RetrieveOut, parse_options)
from s2m_retrieval.service.uploads import UnsupportedImage, UploadTooLarge, decode_sketch, from_base64

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
API_VERSION = "v1"
# The page loads only its own files; images come as data: URLs or from this origin.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may ask for, how many queries compute at once and how sketch queries batch."""

    max_upload_bytes: int = 4 * 1024 * 1024   # a 512 px canvas PNG is ~20 KB
    max_pixels: int = 2048 * 2048
    max_k: int = MAX_K
    max_candidates: int = MAX_CANDIDATES
    max_steps: int = MAX_STEPS
    concurrency: int = 2                      # queries (or batches) on the models at once
    max_queued: int = 64                      # queries waiting beyond those; more get 503
    # Sketch queries in one forward of E, H and G (1: each alone). With the shipped models on one CPU thread a
    # sketch costs about the same at 4 or 16 a batch; a longer batch only finishes later (a loaded service's p95).
    max_batch: int = 8
    batch_wait_ms: int = 5                    # how long a lone sketch query waits for others to join its batch

    def __post_init__(self) -> None:
        batching = {"max_batch": (1, MAX_BATCH, ""), "batch_wait_ms": (0, MAX_BATCH_WAIT_MS, " ms")}
        bad = [f"{k}={v}" for k, v in asdict(self).items() if k not in batching and (not isinstance(v, int) or v < 1)]
        if bad:
            raise BadInputError(f"service limits must be positive integers, got {', '.join(bad)}")
        for name, (low, high, unit) in batching.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise BadInputError(f"--{name.replace('_', '-')} must be between {low} and {high}{unit}, got {value}")
        ceilings = {"max_k": MAX_K, "max_candidates": MAX_CANDIDATES, "max_steps": MAX_STEPS}
        over = [f"{k}={getattr(self, k)} (at most {v})" for k, v in ceilings.items() if getattr(self, k) > v]
        if over:
            raise BadInputError(f"service limits may only lower the query limits: {', '.join(over)}")

    @property
    def max_body_bytes(self) -> int:
        """Request body limit: the upload as base64 (4/3) plus room for the other fields and multipart framing."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


class Busy(S2MError):
    """Every query slot and queue place is taken, or the service is stopping (HTTP 503, retry later)."""


class _HTTPError(S2MError):
    """A protocol-level refusal with its own status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


STATUS = ((UploadTooLarge, 413), (ImageTooLargeError, 413), (UnsupportedImage, 415), (UnsupportedImageError, 415), (ImageNotFound, 404), (OptionError, 422),
          (BadInputError, 400), (Busy, 503), (Stopping, 503), (DatabaseLockedError, 503), (IndexBusyError, 503),
          # The index changed under the service into something it cannot serve (killed build, other models).
          (IndexIncompleteError, 503), (VersionMismatchError, 503), (S2MError, 500))


ERRORS = {400: "Bad input: an unreadable sketch, bad options or filter.", 401: "Missing or wrong token.",
          404: "No such image in the served index.", 411: "No Content-Length header.",
          413: "The upload or its pixels exceed the service's limits.", 415: "Not an accepted content type or image "
          "format.", 422: "An option is missing, unknown, of the wrong type or out of range.",
          503: "Busy, or the index changed into one the service cannot serve; retry later."}


def _errors(*codes: int) -> dict:
    """OpenAPI responses of these error statuses: each a one-line JSON `detail`."""
    return {code: {"model": ErrorOut, "description": ERRORS[code]} for code in codes}


def error_status(exc: S2MError) -> int:
    """The HTTP status of a domain error."""
    return next(status for kind, status in STATUS if isinstance(exc, kind))


def _message(exc: Exception) -> str:
    # Engine messages name CLI flags ("--where ..."); the API's fields have the same names without dashes.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[2:] if text.startswith("--") else text


def _submit(pool: ThreadPoolExecutor, fn):
    try:
        return pool.submit(fn)
    except RuntimeError:  # the app shut down between taking the pool and submitting
        raise Busy("the service is stopping; retry in a moment") from None


class QueryRunner:
    """The query thread pool with a bounded queue; counts what it holds in the in-flight gauge. The threads start
    with the first query after each start of the app, so an app served again after a shutdown still answers."""

    def __init__(self, limits: ServiceLimits, metrics: ServiceMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._held = 0

    async def run(self, fn):
        """fn() on a query thread; Busy when concurrency + max_queued queries are already held."""
        with self._slot() as pool:
            return await asyncio.wrap_future(_submit(pool, fn))

    async def run_batched(self, batcher: SketchBatcher, query: SketchQuery):
        """A sketch query answered in a batch: queued with the batcher, and its drain asked of the query threads
        (one that finds its query taken by an earlier batch returns at once). Held like `run`."""
        with self._slot() as pool:
            future = batcher.add(query)
            try:
                _submit(pool, lambda: batcher.drain(query))
            except Busy:
                future.cancel()  # the drains of a closed pool will not come; a later start's skip it
                raise
            return await asyncio.wrap_future(future)

    @contextmanager
    def _slot(self):
        """A place among the queries held (Busy when none is left), and the pool to run on."""
        with self._lock:
            if self._held >= self.limits.concurrency + self.limits.max_queued:
                raise Busy(f"the service is busy ({self._held} queries running or queued); retry in a moment")
            self._held += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.limits.concurrency, thread_name_prefix="s2m-query")
            pool = self._pool
        self.metrics.in_flight.inc()
        try:
            yield pool
        finally:
            with self._lock:
                self._held -= 1
            self.metrics.in_flight.dec()

    def close(self) -> None:
        """Stop the threads (queued queries are dropped)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def create_app(engine, limits: ServiceLimits | None = None, token: str | None = None) -> FastAPI:
    """The service over an opened RetrievalEngine (the caller closes it); `token` guards `/v1` and `/metrics`."""
    limits = limits or ServiceLimits()
    metrics = ServiceMetrics(engine)
    runner = QueryRunner(limits, metrics)
    batcher = SketchBatcher(engine, lambda data: _sketch(data, limits), limits.max_batch, limits.batch_wait_ms,
                            metrics.batch_size.observe) if limits.max_batch > 1 else None
    snapshot = {"columns": views.label_columns(engine)}

    def fresh() -> None:
        """Serve what the index holds now: builds, adds and removes since the last request are picked up."""
        if engine.refresh():
            snapshot["columns"] = views.label_columns(engine)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        runner.close()
        if batcher is not None:
            batcher.close()

    app = FastAPI(title="s2m-retrieval", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Sketch-based retrieval of medical images: draw the anatomy, get the most similar "
                              "archive images. The OpenAPI document is at /openapi.json; the page at /.")
    app.state.engine, app.state.limits, app.state.metrics = engine, limits, metrics
    _install_edges(app, metrics)
    guard = [Depends(_bearer(token))] if token else []
    guarded = _errors(401) if token else {}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["service"], dependencies=[Depends(fresh)], responses=_errors(503))
    async def healthz() -> dict:
        """Liveness: the index is open (no authentication)."""
        return {"status": "ok", "index": engine.reader.stamp.name, "images": int(engine.reader.store.ntotal)}

    @app.get("/metrics", tags=["service"], dependencies=guard, response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}} | guarded)
    async def metrics_page() -> Response:
        """Request counts, latency histograms, query stage times, batch sizes, queries in flight, index size."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix=f"/{API_VERSION}", dependencies=[*guard, Depends(fresh)], tags=["v1"],
                   responses=_errors(503) | guarded)

    @v1.get("/index", response_model=IndexOut)
    async def index_info() -> dict:
        """Size, model and metric versions of the served index, its label columns, the service's limits."""
        return views.index_stats(engine) | {"label_columns": snapshot["columns"], "limits": asdict(limits)}

    @v1.post("/retrieve", response_model=RetrieveOut, responses=_errors(400, 404, 411, 413, 415, 422),
             openapi_extra=_request_body(RetrieveOptions, "A sketch query (sketch) or \"more like this\" (like)."))
    async def retrieve(request: Request) -> dict:
        """Top-k archive images for a sketch (PNG/JPEG upload or base64 JSON) or for an indexed image (like)."""
        fields, data = await _read_body(request, limits)
        opts = parse_options(RetrieveOptions, fields)
        _check_ranges(opts, limits)
        if (data is None) == (opts.like is None):
            raise BadInputError("give either a sketch (a PNG/JPEG file or base64) or like=IMAGE_ID, not "
                                + ("both" if data is not None else "neither"))
        from s2m_retrieval.query.filters import parse_where

        parse_where(opts.where)  # before the models run
        query = dict(k=opts.k, n_candidates=opts.candidates, alpha=opts.alpha, where=opts.where,
                     max_distance=opts.max_distance, normalisation=opts.normalisation)
        if data is None:
            if opts.steps is not None:
                raise BadInputError("steps apply to sketch queries; a like query uses the image's stored vector")
            def work():
                views.image_meta(engine, opts.like)  # 404 for an id outside the index
                return engine.query_like(opts.like, **query)
            result = await runner.run(work)
        else:
            steps, note = engine.sketch_steps(opts.steps)  # before the models run
            # x_hat is made only for a re-rank or to be shown; E's code alone ranks the same
            sketch_query = SketchQuery(data, steps, query | {"note": note}, x_hat=opts.include_images or opts.alpha < 1)
            if batcher is not None:
                result = await runner.run_batched(batcher, sketch_query)
            else:
                result = await runner.run(lambda: _alone(engine, sketch_query, _sketch(data, limits), metrics))
        metrics.observe_stages(result.timings_ms)
        return _result_json(result, opts.include_images)

    @v1.post("/generate", response_class=Response,
             openapi_extra=_request_body(GenerateOptions, "A sketch to turn into an image."),
             responses={200: {"content": {"image/png": {}}, "description": "x_hat, the generated image."}}
             | _errors(400, 411, 413, 415, 422))
    async def generate(request: Request) -> Response:
        """The generated image x_hat of a sketch (E, then T refinement steps of H), as PNG."""
        fields, data = await _read_body(request, limits)
        opts = parse_options(GenerateOptions, fields)
        _check_ranges(opts, limits)
        if data is None:
            raise BadInputError("no sketch: send a PNG/JPEG file part 'sketch' or JSON {\"sketch\": BASE64}")
        steps = engine.default_steps if opts.steps is None else opts.steps

        def work():
            import torch

            from s2m_retrieval.model.pipeline import to_uint8

            with torch.inference_mode():
                _, _, x_hat = engine.pipeline.generate(_sketch(data, limits), steps=steps)
            return views.png_bytes(to_uint8(x_hat)[0])

        png = await runner.run(work)
        return Response(png, media_type="image/png", headers={"X-S2M-Steps": str(steps)})

    @v1.get("/images/{image_id}", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "The image as PNG."}} | _errors(404, 422))
    def image(image_id: int, size: Literal["thumb", "original"] = Query("thumb", description=(
            "thumb: the stored thumbnail the re-rank uses; original: the archive file, re-encoded as PNG."))
              ) -> Response:
        """An indexed image by id: its stored thumbnail, or its original archive file."""
        png = views.image_png(engine, image_id, size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @v1.get("/images/{image_id}/meta", response_model=ImageMetaOut, responses=_errors(404, 422))
    def image_meta(image_id: int) -> dict:
        """An indexed image's file name, size and labels."""
        return views.image_meta(engine, image_id)

    app.include_router(v1)
    return app


def _alone(engine, query: SketchQuery, grey, metrics: ServiceMetrics):
    """A sketch query without batching (max_batch 1): the same two halves as a batch's, for one sketch."""
    coded, = engine.encode_sketches([grey], query.steps, x_hat=query.x_hat)
    metrics.batch_size.observe(1)
    return engine.rank_sketch(coded, **query.options)


def _sketch(data: bytes, limits: ServiceLimits):
    from s2m_retrieval.query.engine import check_sketch

    return check_sketch(decode_sketch(data, limits.max_upload_bytes, limits.max_pixels))


def _check_ranges(opts, limits: ServiceLimits) -> None:
    """The service's upper limits (the models' own checks cover the rest)."""
    caps = {"k": limits.max_k, "candidates": limits.max_candidates, "steps": limits.max_steps}
    over = [f"{name}: at most {cap} here, got {getattr(opts, name)}" for name, cap in caps.items()
            if getattr(opts, name, None) is not None and getattr(opts, name) > cap]
    if over:
        raise OptionError("; ".join(over))


async def _read_body(request: Request, limits: ServiceLimits) -> tuple[dict, bytes | None]:
    """(option fields, sketch bytes or None) from a JSON or multipart body; the length is checked first."""
    length = request.headers.get("content-length")
    if length is None:
        raise _HTTPError(411, "send a Content-Length header (chunked uploads are not accepted)")
    if not length.isdigit() or int(length) > limits.max_body_bytes:
        raise UploadTooLarge(f"the request body is {length} bytes, the limit is {limits.max_body_bytes} bytes "
                             f"(sketches up to {limits.max_upload_bytes} bytes)")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise BadInputError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadInputError("the JSON body must be an object of options, e.g. {\"sketch\": BASE64, \"k\": 10}")
        sketch = body.pop("sketch", None)
        if sketch is not None and not isinstance(sketch, str):
            raise BadInputError("sketch must be a string: the PNG/JPEG bytes base64-encoded, or a data: URL")
        return body, None if sketch is None else from_base64(sketch, limits.max_upload_bytes)
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        fields, data = {}, None
        for key, value in form.multi_items():
            if key == "sketch":
                if isinstance(value, str):
                    raise BadInputError("sketch must be a file part (the PNG/JPEG bytes), not a text field")
                data = await value.read(limits.max_upload_bytes + 1)
            elif not isinstance(value, str):
                raise BadInputError(f"{key}: only the sketch may be a file part")
            elif key in fields:
                raise OptionError(f"{key}: given more than once")
            elif value != "":  # an empty form field means "not given"
                fields[key] = value
        return fields, data
    raise UnsupportedImage(f"content type {kind or 'none'} is not accepted: send multipart/form-data with a file "
                           "part 'sketch', or application/json with a base64 'sketch'")


def _data_url(array) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(views.png_bytes(array)).decode("ascii")


def _result_json(result, include_images: bool) -> dict:
    """The engine's result for clients: file names instead of server paths, image links, optional data: URLs."""
    out = result.to_dict()
    for i, hit in enumerate(out["hits"]):
        hit["file"] = os.path.basename(hit.pop("path"))
        hit["image_url"] = f"/{API_VERSION}/images/{hit['id']}"
        hit["meta_url"] = f"/{API_VERSION}/images/{hit['id']}/meta"
        hit["thumb"] = _data_url(result.thumbs[i]) if include_images else None
    out["x_hat"] = _data_url(result.x_hat) if include_images and result.x_hat is not None else None
    out["query_image"] = _data_url(result.query) if include_images and result.x_hat is None else None
    return out


def _request_body(model, description: str) -> dict:
    """OpenAPI requestBody: the options as JSON (sketch in base64) or as multipart form fields (sketch a file)."""
    schema = model.model_json_schema()
    props = schema.get("properties", {})
    as_json = schema | {"properties": {"sketch": {"type": "string", "description": "PNG/JPEG, base64 or a data: "
                                                                                   "URL"}} | props}
    as_form = schema | {"properties": {"sketch": {"type": "string", "format": "binary"}} | props}
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": as_json},
                                        "multipart/form-data": {"schema": as_form}}}}


def _bearer(token: str):
    """A dependency that wants `Authorization: Bearer <token>` (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise _HTTPError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'")

    return check


def _install_edges(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Error handlers (one-line JSON messages), request metrics and security headers."""

    @app.exception_handler(S2MError)
    async def domain_error(_request: Request, exc: S2MError) -> JSONResponse:
        status = exc.status if isinstance(exc, _HTTPError) else error_status(exc)
        if status >= 500 and not isinstance(exc, (Busy, Stopping, DatabaseLockedError, IndexBusyError)):
            log.error("request failed: %s", exc, exc_info=exc)
        headers = {"Retry-After": "1"} if status == 503 else {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"detail": _message(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or ("/static" if request.url.path.startswith("/static/") else UNMATCHED)
        metrics.observe_request(path, request.method, response.status_code, time.perf_counter() - t0)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response
