"""The HTTP API with FastAPI's TestClient over the tiny random setup: each endpoint, each error, auth, metrics."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

pytest.importorskip("fastapi", reason="the service tests need the service extra: pip install -e '.[test]'")
from fastapi.testclient import TestClient  # noqa: E402

from s2m_retrieval.service import ServiceLimits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _data_url_image(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return _decode(base64.b64decode(url.split(",", 1)[1]))


SKETCH = _png(phantom_sketch())


def _error(response, status: int, needle: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and needle in detail, detail
    return detail


def test_health_index_and_openapi(client, engine):
    assert client.get("/healthz").json() == {"status": "ok", "index": "default", "images": 24}
    info = client.get("/v1/index").json()
    assert info["images"] == 24 and info["model_version"] == engine.reader.stamp.model_version
    assert info["perceptual"] == "random:0" and info["refiner"] and info["default_steps"] == 3
    assert info["label_columns"]["tonsil_grade"] == {"kind": "number", "min": 0, "max": 4, "values": [0, 1, 2, 3, 4]}
    assert info["label_columns"]["redness"]["values"] is None and "id" not in info["label_columns"]
    assert info["limits"]["max_k"] == 100
    spec = client.get("/openapi.json").json()
    assert {"/v1/retrieve", "/v1/generate", "/v1/images/{image_id}", "/v1/images/{image_id}/meta", "/v1/index",
            "/healthz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"sketch", "like", "k", "where", "alpha", "steps"} <= set(body["application/json"]["schema"]["properties"])
    assert client.get("/docs").status_code == 404  # the Swagger page would load its assets from a CDN


def test_retrieve_upload_matches_the_engine(client, engine):
    response = client.post("/v1/retrieve", files={"sketch": ("query.bin", SKETCH, "application/octet-stream")},
                           data={"k": "5", "steps": "1", "alpha": "0.3"})
    assert response.status_code == 200, response.text
    out = response.json()
    direct = engine.query_sketch(phantom_sketch(), k=5, steps=1, alpha=0.3)
    assert [h["id"] for h in out["hits"]] == [h.id for h in direct.hits]
    assert [h["score"] for h in out["hits"]] == pytest.approx([h.score for h in direct.hits], abs=1e-6)
    hit = out["hits"][0]
    assert hit["file"].endswith(".png") and "/" not in hit["file"]  # no server paths
    assert hit["image_url"] == f"/v1/images/{hit['id']}" and hit["thumb"] is None
    assert out["provenance"]["steps"] == 1 and out["provenance"]["query"] == "sketch" and out["x_hat"] is None


def test_retrieve_json_base64_and_data_url_with_images(client, engine):
    body = {"sketch": base64.b64encode(SKETCH).decode(), "k": 3}
    plain = client.post("/v1/retrieve", json=body).json()
    as_url = client.post("/v1/retrieve", json=body | {"sketch": "data:image/png;base64," + body["sketch"],
                                                      "include_images": True}).json()
    assert [h["id"] for h in plain["hits"]] == [h["id"] for h in as_url["hits"]]
    r = engine.encoder.resolution
    assert _data_url_image(as_url["x_hat"]).shape == (r, r, 3) and as_url["query_image"] is None
    stored = engine.reader.arrays("thumbs", [as_url["hits"][0]["id"]])[0]
    assert np.array_equal(_data_url_image(as_url["hits"][0]["thumb"]), stored)


def test_more_like_this_and_filters(client):
    out = client.post("/v1/retrieve", json={"like": 9, "k": 3, "include_images": True}).json()
    assert out["hits"][0]["id"] == 9 and out["provenance"]["query"] == "like"
    assert out["query_image"] is not None and out["x_hat"] is None
    out = client.post("/v1/retrieve", json={"like": 9, "k": 24, "where": "tonsil_grade>=3"}).json()
    assert out["hits"] and all(h["labels"]["tonsil_grade"] >= 3 for h in out["hits"])
    assert out["provenance"]["where"] == ["tonsil_grade>=3"]
    none = client.post("/v1/retrieve", json={"like": 9, "where": "tonsil_grade>9"})
    assert none.status_code == 200 and none.json()["hits"] == []


def test_generate(client, engine):
    import torch

    from s2m_retrieval.model.pipeline import to_uint8

    response = client.post("/v1/generate", files={"sketch": ("s.png", SKETCH, "image/png")}, data={"steps": "2"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-s2m-steps"] == "2"
    with torch.inference_mode():
        expected = to_uint8(engine.pipeline.generate(phantom_sketch(), steps=2)[2])[0]
    assert np.array_equal(_decode(response.content), expected)
    default = client.post("/v1/generate", json={"sketch": base64.b64encode(SKETCH).decode()})
    assert default.status_code == 200 and default.headers["x-s2m-steps"] == "3"
    _error(client.post("/v1/generate", json={}), 400, "no sketch")


def test_images_and_meta(client, engine, setup, monkeypatch):
    from s2m_retrieval.data.archive import read_image

    thumb = client.get("/v1/images/5")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert np.array_equal(_decode(thumb.content), engine.reader.arrays("thumbs", [5])[0])
    meta = client.get("/v1/images/5/meta").json()
    path = engine.reader.images([5])[5]["path"]
    assert meta["file"] == Path(path).name and meta["labels"]["tonsil_grade"] in range(5) and meta["width"] == 64
    original = client.get("/v1/images/5", params={"size": "original"})
    assert np.array_equal(_decode(original.content), read_image(setup.archive / "images" / meta["file"]))
    _error(client.get("/v1/images/999"), 404, "image 999 is not in index 'default'")
    _error(client.get("/v1/images/999/meta"), 404, "not in index")
    _error(client.get("/v1/images/abc"), 422, "image_id: Input should be a valid integer")
    _error(client.get("/v1/images/..%2F..%2Fetc%2Fpasswd"), 404, "Not Found")  # ids only, no paths
    _error(client.get("/v1/images/5", params={"size": "huge"}), 422, "size")
    real = engine.reader.images
    monkeypatch.setattr(engine.reader, "images", lambda ids: {i: real([i])[i] | {"path": "/gone/x.png"} for i in ids})
    _error(client.get("/v1/images/5", params={"size": "original"}), 404, "no longer in the archive")
    assert client.get("/v1/images/5").status_code == 200  # the thumbnail is stored in the index


def _truncated_png() -> bytes:
    return SKETCH[: len(SKETCH) // 2]


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(phantom_sketch()).save(buf, format="GIF")
    return buf.getvalue()


def test_bad_uploads(client):
    blank = _png(np.full((64, 64), 255, np.uint8))
    cases = [
        (("s.png", b"hello, not an image"), 415, "not an image (accepted: PNG, JPEG, BMP, TIFF, WEBP; judged by "
                                                "content"),
        (("sketch.png", _gif()), 415, "GIF images are not accepted"),
        (("s.png", _truncated_png()), 400, "unreadable or truncated"),
        (("s.png", b""), 400, "empty file"),
        (("s.png", blank), 400, "sketch is empty: draw the outlines"),
    ]
    for (name, data), status, needle in cases:
        _error(client.post("/v1/retrieve", files={"sketch": (name, data, "image/png")}), status, needle)
    _error(client.post("/v1/retrieve", json={"sketch": "@@not base64@@"}), 400, "not valid base64")
    _error(client.post("/v1/retrieve", json={"sketch": 12}), 400, "sketch must be a string")
    _error(client.post("/v1/retrieve", data={"sketch": "text"}, files={"x": ("a", b"b")}), 400, "file part")
    _error(client.post("/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"}), 400,
           "not valid JSON")
    _error(client.post("/v1/retrieve", json=[1, 2]), 400, "must be an object")
    _error(client.post("/v1/retrieve", content=SKETCH, headers={"content-type": "image/png"}), 415,
           "content type image/png is not accepted")


def test_bad_options(client):
    sketch = base64.b64encode(SKETCH).decode()
    cases = [
        ({"sketch": sketch, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"sketch": sketch, "k": 101}, 422, "k: at most 100 here, got 101"),
        ({"sketch": sketch, "steps": 11}, 422, "steps: at most 10 here"),
        ({"sketch": sketch, "alpha": 2}, 422, "alpha: Input should be less than or equal to 1"),
        ({"sketch": sketch, "k": "many"}, 422, "k: Input should be a valid integer"),
        ({"sketch": sketch, "normalisation": "zscore"}, 422, "normalisation"),
        ({"sketch": sketch, "path": "/etc/passwd"}, 422, "path: unknown option"),
        ({"sketch": sketch, "where": "tonsil_grade>>3"}, 400, "where 'tonsil_grade>>3'"),
        ({"sketch": sketch, "where": "grade>1"}, 400, "unknown column 'grade'"),
        ({"like": 9, "steps": 1}, 400, "steps apply to sketch queries"),
        ({"like": 999}, 404, "image 999 is not in index"),
        ({"like": "../x.png"}, 422, "like: Input should be a valid integer"),
        ({"like": 9, "sketch": sketch}, 400, "not both"),
        ({"k": 3}, 400, "not neither"),
    ]
    for body, status, needle in cases:
        _error(client.post("/v1/retrieve", json=body), status, needle)
    form = client.post("/v1/retrieve", files={"sketch": ("s.png", SKETCH, "image/png")}, data={"k": ["2", "3"]})
    _error(form, 422, "k: given more than once")


def test_size_limits(engine):
    limits = ServiceLimits(max_upload_bytes=2000, max_pixels=100 * 100)
    with TestClient(create_app(engine, limits)) as small:
        big = _png(np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8))
        assert len(big) > 2000
        _error(small.post("/v1/retrieve", files={"sketch": ("s.png", big, "image/png")}), 413,
               "limit is 2000 bytes")
        wide = _png(np.full((20, 600), 255, np.uint8))
        assert len(wide) < 2000
        _error(small.post("/v1/retrieve", files={"sketch": ("s.png", wide, "image/png")}), 413,
               "600x20 pixels, the pixel limit is 10000 pixels")
        _error(small.post("/v1/retrieve", json={"sketch": "A" * 4000}), 413, "limit is 2000 bytes")
        huge = small.post("/v1/retrieve", content=b"x" * (limits.max_body_bytes + 1),
                          headers={"content-type": "application/json"})
        _error(huge, 413, "the request body is")
        chunked = small.post("/v1/retrieve", content=iter([b"{}"]), headers={"content-type": "application/json"})
        _error(chunked, 411, "Content-Length")
        ok = small.post("/v1/retrieve", files={"sketch": ("s.png", SKETCH, "image/png")}, data={"k": "1"})
        assert ok.status_code == 200 and len(SKETCH) < 2000


def test_token_auth(engine):
    with TestClient(create_app(engine, token="s3cret")) as guarded:
        _error(guarded.get("/v1/index"), 401, "missing or wrong token")
        assert guarded.get("/v1/index").headers["www-authenticate"] == "Bearer"
        _error(guarded.get("/v1/index", headers={"Authorization": "Bearer nope"}), 401, "wrong token")
        _error(guarded.get("/metrics"), 401, "token")
        _error(guarded.get("/v1/images/5"), 401, "token")
        good = {"Authorization": "Bearer s3cret"}
        assert guarded.get("/v1/index", headers=good).status_code == 200
        assert guarded.get("/metrics", headers=good).status_code == 200
        assert guarded.get("/healthz").status_code == 200 and guarded.get("/").status_code == 200


def _sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def test_metrics(engine):
    with TestClient(create_app(engine)) as fresh:
        for _ in range(2):
            assert fresh.post("/v1/retrieve", json={"like": 3, "k": 2}).status_code == 200
        fresh.post("/v1/retrieve", json={"like": 999})
        fresh.get("/v1/images/7")
        fresh.get("/no/such/page")
        text = fresh.get("/metrics").text
    assert _sample(text, "s2m_http_requests_total", route="/v1/retrieve", status="200") == 2
    assert _sample(text, "s2m_http_requests_total", route="/v1/retrieve", status="404") == 1
    assert _sample(text, "s2m_http_requests_total", route="/v1/images/{image_id}", status="200") == 1
    assert _sample(text, "s2m_http_requests_total", route="unmatched", status="404") == 1
    assert _sample(text, "s2m_http_request_duration_seconds_count", route="/v1/retrieve") == 3
    assert _sample(text, "s2m_query_stage_seconds_count", stage="rerank") == 2
    assert _sample(text, "s2m_index_images", index="default") == 24
    assert "s2m_queries_in_flight 0.0" in text


def test_page_and_static_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        got = client.get(asset)
        assert got.status_code == 200, asset
        # Offline: nothing the page loads points to another host.
        assert not re.search(r"https?://|//cdn|@import", got.text), asset
    assert {"/static/app.js", "/static/style.css"} <= set(re.findall(r'"(/static/[^"]+)"', page.text))
    assert not re.search(r"https?://", page.text)


def _post(base: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/retrieve", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_concurrent_queries_and_a_full_queue(engine, monkeypatch):
    from s2m_retrieval.service.server import background_server

    sketch = base64.b64encode(SKETCH).decode()
    with background_server(create_app(engine)) as base:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _post(base, {"sketch": sketch, "k": 2} if i % 2 else {"like": i + 1}),
                                    range(8)))
    assert [status for status, _ in answers] == [200] * 8
    assert all(len(out["hits"]) == (2 if i % 2 else 10) for i, (_, out) in enumerate(answers))

    app = create_app(engine, ServiceLimits(concurrency=1, max_queued=1))
    with background_server(app) as base:
        release, started = threading.Event(), threading.Semaphore(0)
        real = engine.query_like

        def held(*args, **kwargs):
            started.release()
            release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, "query_like", held)
        registry = app.state.metrics.registry
        with ThreadPoolExecutor(2) as pool:
            try:
                first = pool.submit(_post, base, {"like": 1})
                assert started.acquire(timeout=10)               # running on the one query thread
                second = pool.submit(_post, base, {"like": 2})  # queued
                deadline = time.monotonic() + 10
                while registry.get_sample_value("s2m_queries_in_flight") < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                status, out = _post(base, {"like": 3})
                assert status == 503 and "busy" in out["detail"]
            finally:
                release.set()
            assert first.result()[0] == 200 and second.result()[0] == 200


def test_served_index_follows_adds_and_removes_without_restart(setup, tmp_path):
    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.sync import remove_entries
    from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index
    from s2m_retrieval.query.engine import RetrievalEngine

    home = setup.private_home(tmp_path / "home")
    new = tmp_path / "new.png"
    Image.fromarray(make_phantom(5, 3)[0]).save(new)
    with RetrievalEngine.open("default", home=home, models=setup.models) as engine, \
            TestClient(create_app(engine)) as c:
        assert c.get("/healthz").json()["images"] == 24
        add_files([new], load_encoder(setup.encoder_spec), home=home)
        assert c.get("/healthz").json()["images"] == 25
        with sqlite3.connect(home / "s2m.db") as conn:
            (new_id,), = conn.execute("SELECT id FROM images WHERE path = ?", (str(new),)).fetchall()
        answer = c.post("/v1/retrieve", json={"like": new_id, "k": 5})
        assert answer.status_code == 200 and answer.json()["provenance"]["like_id"] == new_id, answer.text
        assert c.get(f"/v1/images/{new_id}/meta").status_code == 200
        remove_entries([str(new)], home=home)
        assert c.get(f"/v1/images/{new_id}/meta").status_code == 404
        assert c.get("/v1/index").json()["images"] == 24
        other = load_encoder(f"inverter:models={setup.other_models},perceptual=random")
        build_index(setup.archive, other, home=home, options=BuildOptions(rebuild=True))
        gone = c.get("/v1/index")  # rebuilt with other models than the service holds: say so, do not guess
        assert gone.status_code == 503 and "restart" in gone.json()["detail"]
