"""The thin client of `s2m retrieve --server`: queries asked of a running `s2m serve` through its `/v1` HTTP API.

It speaks HTTP with the standard library and imports no torch, FAISS or engine, so a query costs the round trip,
not the model load. Answers come back in the shape `result_view` prints and draws (hits with the archive's file
names: the server never exposes its paths).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from s2m_retrieval.errors import BadImageError, BadInputError, S2MError
from s2m_retrieval.query.result_view import Hit

TIMEOUT_S = 120.0            # a query may wait in the server's queue behind others
PER_QUERY_STATUSES = (400, 413, 415)   # the sketch (or the filter) of this query; the next one may be fine
IMAGE_FIELDS = ("x_hat", "query_image")


class ServerError(S2MError):
    """The server cannot be reached, refused the token or the options, or failed: no query of the run can be
    answered."""


@dataclass
class RemoteResult:
    """A server's answer: what `result_view` reads (and, when asked with images, the sheet's pictures) plus the
    JSON record printed for it."""

    hits: list[Hit]
    candidates: int
    timings_ms: dict[str, float]
    provenance: dict
    record: dict                     # the answer without its images, as --json prints it
    query: object = None             # the sketch [H, W] uint8 or the like query's image [R, R, 3] (sheets)
    x_hat: object = None             # [R, R, 3] uint8 (sheets of sketch queries)
    thumbs: object = None            # [k, R, R, 3] uint8 (sheets)


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; anything but http(s)://HOST[:PORT][/prefix] is a
    BadInputError."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise BadInputError(f"--server must be the URL of a running s2m serve, e.g. http://127.0.0.1:8000, "
                            f"got {url!r}")
    return url.strip().rstrip("/")


class Client:
    """Queries to one server: `retrieve` sends a sketch file or an indexed image id with the query options."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.url = check_url(url)
        self.token = token
        self.timeout_s = timeout_s

    def retrieve(self, options: dict, sketch: Path | None = None, like: int | None = None,
                 images: bool = False) -> RemoteResult:
        """One query (a sketch file, or `like` an image id): options as the engine names them (k, n_candidates,
        alpha, where, max_distance, normalisation, steps); `images` also fetches x_hat and the hits' thumbnails
        for a sheet. A bad sketch is a BadInputError naming the file; anything that stops every query (no server,
        wrong token, refused options, a server failure) a ServerError."""
        from s2m_retrieval.data.image_io import input_file

        body = {"k": options["k"], "candidates": options["n_candidates"], "alpha": options["alpha"],
                "where": options.get("where"), "max_distance": options.get("max_distance"),
                "normalisation": options["normalisation"], "steps": options.get("steps"), "include_images": images}
        body = {key: value for key, value in body.items() if value is not None}
        if sketch is not None:
            body["sketch"] = base64.b64encode(input_file(sketch, "sketch", BadImageError).read_bytes()).decode()
        else:
            body["like"] = like
        t0 = time.perf_counter()
        try:
            answer = self._post("/v1/retrieve", body)
        except BadInputError as exc:
            raise BadInputError(_naming(str(exc), sketch)) from None
        round_trip = (time.perf_counter() - t0) * 1e3
        return _result(answer, round_trip, sketch, images, self.url)

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc.code, _detail(exc)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise self._timeout() from None
            raise ServerError(f"cannot reach the server at {self.url}: {reason}; is `s2m serve` running there?"
                              ) from None
        except (TimeoutError, socket.timeout):
            raise self._timeout() from None
        except (HTTPException, OSError) as exc:  # the connection broke mid-answer
            raise ServerError(f"the server at {self.url} broke off the answer ({type(exc).__name__}: {exc})"
                              ) from None
        try:
            answer = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("hits"), list):
            raise ServerError(f"{self.url} did not answer as s2m serve does (no JSON hits from {path}); check "
                              "--server")
        return answer

    def _refusal(self, status: int, detail: str) -> S2MError:
        if status == 401:
            given = "the token given" if self.token else "no token (give --token or set S2M_SERVE_TOKEN)"
            return ServerError(f"the server at {self.url} wants its token and got {given}: pass the token it was "
                               "started with")
        if status in PER_QUERY_STATUSES:
            return BadInputError(detail)
        if status == 404 and not detail.startswith("Not Found"):
            return BadInputError(detail)  # "image N is not in index ..." of a like query
        if status == 404:
            return ServerError(f"{self.url} has no /v1/retrieve (HTTP 404): is it an s2m serve?")
        return ServerError(f"the server at {self.url} answered HTTP {status}: {detail}")

    def _timeout(self) -> ServerError:
        return ServerError(f"the server at {self.url} did not answer within {self.timeout_s:g} s")


def remote_table(result: RemoteResult, url: str) -> list[str]:
    """`result_view.result_table` of a server's answer: file names in place of the server's paths."""
    from s2m_retrieval.query.result_view import result_table

    return [f"files of the archive served at {url}" if line.startswith("paths relative to") else line
            for line in result_table(result)]


def _detail(exc: urllib.error.HTTPError) -> str:
    """The one-line `detail` of an error answer (its status line when the body is no s2m JSON)."""
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, UnicodeDecodeError, AttributeError, OSError, HTTPException):
        detail = None
    text = detail if isinstance(detail, str) and detail else str(exc.reason or exc.code)
    return text.splitlines()[0] if text.strip() else str(exc.code)


def _naming(detail: str, sketch: Path | None) -> str:
    """A server's message about "the sketch" naming the file instead, as local queries name it."""
    if sketch is None:
        return detail
    for start in ("the sketch", "sketch"):
        if detail.startswith(start):
            return f"sketch {sketch}{detail[len(start):]}"
    return f"sketch {sketch}: {detail}"


def _result(answer: dict, round_trip_ms: float, sketch: Path | None, images: bool, url: str) -> RemoteResult:
    try:
        hits = [Hit(rank=h["rank"], id=h["id"], path=h["file"], latent_distance=h["latent_distance"],
                          perceptual_distance=h["perceptual_distance"], score=h["score"], labels=h["labels"])
                for h in answer["hits"]]
        timings = dict(answer["timings_ms"]) | {"round_trip": round(round_trip_ms, 2)}
        record = {key: value for key, value in answer.items() if key not in IMAGE_FIELDS}
        record["hits"] = [{key: value for key, value in h.items() if key != "thumb"} for h in answer["hits"]]
        record["timings_ms"] = timings
        result = RemoteResult(hits=hits, candidates=answer["candidates"], timings_ms=timings,
                              provenance=answer["provenance"], record=record)
        if images:
            import numpy as np

            result.thumbs = np.stack([_picture(h["thumb"]) for h in answer["hits"]]) if hits else \
                np.zeros((0, 1, 1, 3), np.uint8)
            if sketch is not None:
                from s2m_retrieval.data.canonical import as_grey_sketch
                from s2m_retrieval.data.image_io import decode_pixels

                result.query, result.x_hat = as_grey_sketch(decode_pixels(sketch)), _picture(answer["x_hat"])
            else:
                result.query = _picture(answer["query_image"])
    except (KeyError, TypeError, ValueError, OSError):
        raise ServerError(f"{url} answered without the fields of an s2m retrieve answer; check --server") from None
    return result


def _picture(data_url: str):
    """A PNG data: URL as uint8 pixels."""
    import numpy as np
    from PIL import Image

    head, _, payload = data_url.partition(",")
    if not head.startswith("data:image/png;base64"):
        raise ValueError("not a PNG data: URL")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
        return np.asarray(img.convert("RGB"))
