"""Dynamic batching in the service: concurrent sketch queries share a forward, answer as unbatched ones do, fail
alone, and the options, the metrics and an app served again after a shutdown behave."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

pytest.importorskip("fastapi", reason="the service tests need the service extra: pip install -e '.[test]'")
from fastapi.testclient import TestClient  # noqa: E402

from s2m_retrieval.errors import BadInputError  # noqa: E402
from s2m_retrieval.service import ServiceLimits, create_app  # noqa: E402
from s2m_retrieval.service.server import background_server  # noqa: E402

# A lone query waits this long for others: long enough that requests sent together on a loaded machine meet.
WAIT_MS = 1000


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _body(png: bytes, **options) -> dict:
    return {"sketch": base64.b64encode(png).decode()} | options


def _image(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _post_all(base: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """Every body POSTed to /v1/retrieve at once, one connection each; (status, JSON) in their order."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(base)
    ready = threading.Barrier(len(bodies))

    def post(body: dict) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.connect()
            ready.wait(30)
            conn.request("POST", "/v1/retrieve", body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def _batches(app) -> tuple[float, float]:
    """(forwards, forwards of one sketch) from the app's batch size histogram."""
    registry = app.state.metrics.registry
    return (registry.get_sample_value("s2m_query_batch_size_count"),
            registry.get_sample_value("s2m_query_batch_size_bucket", {"le": "1.0"}))


def _same(batched: dict, alone: dict) -> None:
    assert [h["id"] for h in batched["hits"]] == [h["id"] for h in alone["hits"]]
    for b, a in zip(batched["hits"], alone["hits"]):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert b["latent_distance"] == pytest.approx(a["latent_distance"], rel=1e-5, abs=1e-6)
        if a["perceptual_distance"] is None:
            assert b["perceptual_distance"] is None
        else:
            assert b["perceptual_distance"] == pytest.approx(a["perceptual_distance"], rel=1e-5, abs=1e-6)
        assert b["thumb"] == a["thumb"] and b["labels"] == a["labels"]
    assert batched["candidates"] == alone["candidates"] and batched["provenance"] == alone["provenance"]
    if alone["x_hat"] is not None:
        assert np.abs(_image(batched["x_hat"]).astype(int) - _image(alone["x_hat"]).astype(int)).max() <= 1


def _mixed_bodies() -> list[dict]:
    """Sketch queries of two sizes and different options: k, alpha (a re-rank), where, normalisation, steps."""
    pngs = [_png(phantom_sketch(index=i, size=64 if i % 3 else 128)) for i in range(6)]
    return [_body(pngs[0]), _body(pngs[1], k=4, include_images=True), _body(pngs[2], alpha=0.3, k=6),
            _body(pngs[3], where="tonsil_grade>=2", normalisation="rank"), _body(pngs[4], steps=0),
            _body(pngs[5], steps=1, include_images=True), _body(pngs[0], k=3, alpha=0.5)]


def test_concurrent_sketch_queries_share_a_forward_and_answer_as_unbatched(engine):
    bodies = _mixed_bodies()
    alone_app = create_app(engine, ServiceLimits(max_batch=1))
    with background_server(alone_app) as base:
        alone = _post_all(base, bodies)
    assert [status for status, _ in alone] == [200] * len(bodies), alone
    assert _batches(alone_app) == (len(bodies), len(bodies))  # unbatched: every forward holds one sketch

    # Forwards when they meet: E alone for 0 and 3 (T=3) and for 4 (T=0); E, H and G for 1, 2 and 6 (T=3, x_hat
    # shown or re-ranked) and for 5 (T=1).
    app = create_app(engine, ServiceLimits(max_batch=len(bodies), batch_wait_ms=WAIT_MS))
    with background_server(app) as base:
        batched = _post_all(base, bodies)
    assert [status for status, _ in batched] == [200] * len(bodies), batched
    forwards, singles = _batches(app)
    assert (forwards, singles) == (4, 2)
    for (_, b), (_, a) in zip(batched, alone):
        _same(b, a)
    assert batched[4][1]["provenance"]["steps"] == 0 and batched[5][1]["provenance"]["steps"] == 1
    assert len(batched[1][1]["hits"]) == 4 and batched[2][1]["hits"][0]["perceptual_distance"] is not None
    assert "s2m_query_batch_size_bucket" in TestClient(app).get("/metrics").text


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_query_that_neither_reranks_nor_shows_x_hat_runs_e_alone(engine, monkeypatch, max_batch):
    full = engine.query_sketch(phantom_sketch(index=2), k=5)  # E, H and G

    def no_generator(*args, **kwargs):
        raise RuntimeError("H and G must not run")

    monkeypatch.setattr(engine.pipeline, "generate", no_generator)
    with TestClient(create_app(engine, ServiceLimits(max_batch=max_batch, batch_wait_ms=0))) as c:
        out = c.post("/v1/retrieve", json=_body(_png(phantom_sketch(index=2)), k=5)).json()
        assert [h["id"] for h in out["hits"]] == [h.id for h in full.hits]
        assert [h["score"] for h in out["hits"]] == pytest.approx([h.score for h in full.hits], abs=1e-5)
        assert out["provenance"] == full.provenance and out["x_hat"] is None
        with pytest.raises(RuntimeError, match="must not run"):  # a picture wants x_hat
            c.post("/v1/retrieve", json=_body(_png(phantom_sketch(index=2)), include_images=True))


def test_a_bad_sketch_fails_alone_in_its_batch(engine):
    good = [_body(_png(phantom_sketch(index=i)), k=3) for i in range(3)]
    blank = _body(_png(np.full((64, 64), 255, np.uint8)))
    whole = _png(phantom_sketch())
    truncated = _body(whole[: len(whole) // 2])
    not_an_image = _body(b"hello, not an image")
    bodies = [good[0], blank, good[1], truncated, not_an_image, good[2]]
    app = create_app(engine, ServiceLimits(max_batch=len(bodies), batch_wait_ms=WAIT_MS))
    with background_server(app) as base:
        answers = _post_all(base, bodies)
    assert [status for status, _ in answers] == [200, 400, 200, 400, 415, 200], answers
    assert "sketch is empty" in answers[1][1]["detail"] and "unreadable or truncated" in answers[3][1]["detail"]
    assert "not an image" in answers[4][1]["detail"]
    for i, (_, out) in zip((0, 1, 2), (answers[0], answers[2], answers[5])):
        direct = engine.query_sketch(phantom_sketch(index=i), k=3)
        assert [h["id"] for h in out["hits"]] == [h.id for h in direct.hits]


def test_a_forward_that_fails_for_one_sketch_fails_only_its_query(engine, monkeypatch):
    poison = phantom_sketch(index=4)
    real = engine.encode_sketches

    def fragile(greys, steps, code="sketch", x_hat=True):
        if any(g.shape == poison.shape and np.array_equal(g, poison) for g in greys):
            raise RuntimeError("this sketch breaks the forward")
        return real(greys, steps, code, x_hat)

    monkeypatch.setattr(engine, "encode_sketches", fragile)
    bodies = [_body(_png(phantom_sketch(index=i)), k=2) for i in (0, 4, 1)]
    app = create_app(engine, ServiceLimits(max_batch=len(bodies), batch_wait_ms=WAIT_MS))
    with background_server(app) as base:
        answers = _post_all(base, bodies)
    assert [status for status, _ in answers] == [200, 500, 200], answers
    assert answers[1][1]["detail"] == "internal error (RuntimeError); see the server log"


def test_batching_options_are_checked():
    from s2m_retrieval.service.batching import MAX_BATCH, MAX_BATCH_WAIT_MS

    assert ServiceLimits(batch_wait_ms=0).batch_wait_ms == 0  # batch what queued, never wait
    cases = {"--max-batch must be between 1 and": dict(max_batch=0),
             f"--max-batch must be between 1 and {MAX_BATCH}, got {MAX_BATCH + 1}": dict(max_batch=MAX_BATCH + 1),
             "--batch-wait-ms must be between 0 and": dict(batch_wait_ms=-1),
             f"between 0 and {MAX_BATCH_WAIT_MS} ms, got 5000": dict(batch_wait_ms=5000),
             "--max-batch must be between 1 and 64, got 2.5": dict(max_batch=2.5)}
    for needle, kwargs in cases.items():
        with pytest.raises(BadInputError, match=needle.replace(".", r"\.")):
            ServiceLimits(**kwargs)


def test_serve_refuses_bad_batching_options_in_one_line(capsys, setup):
    from cli.main import _run, app

    base = ["serve", "--home", str(setup.home), "--model", str(setup.models), "--port", "0"]
    for flag, value, needle in (("--max-batch", "0", "--max-batch must be between 1 and 64, got 0"),
                                ("--batch-wait-ms", "-3", "--batch-wait-ms must be between 0 and 1000 ms, got -3")):
        with pytest.raises(SystemExit) as code:
            _run(app, base + [flag, value])
        err = capsys.readouterr().err
        assert code.value.code != 0 and err == f"error: {needle}\n", err


def test_served_again_after_a_shutdown_it_still_batches(engine):
    app = create_app(engine, ServiceLimits(max_batch=3, batch_wait_ms=WAIT_MS))
    bodies = [_body(_png(phantom_sketch(index=i)), k=2) for i in range(3)]
    for _ in range(2):  # each start gets query threads of its own with the first query
        with TestClient(app) as c:
            assert {"max_batch": 3, "batch_wait_ms": WAIT_MS}.items() <= c.get("/v1/index").json()["limits"].items()
            assert c.post("/v1/retrieve", json=bodies[0]).status_code == 200  # alone: waits, then runs
        with background_server(app) as base:
            assert [status for status, _ in _post_all(base, bodies)] == [200] * 3
    forwards, singles = _batches(app)
    assert singles == 2 and forwards <= 4, (forwards, singles)  # 2 lone queries + 2 batches of the three


class _CountingEngine:
    """The two halves of a sketch query without models: each sketch's "code" is its bytes, its result them back."""

    def __init__(self) -> None:
        self.forwards: list[int] = []

    def encode_sketches(self, greys, steps, x_hat):
        self.forwards.append(len(greys))
        return list(greys)

    def rank_sketch(self, code, **options):
        return code


def test_a_drain_answers_the_oldest_batches_until_its_own_query_is_taken():
    from s2m_retrieval.service.batching import SketchBatcher, SketchQuery

    engine = _CountingEngine()
    batcher = SketchBatcher(engine, decode=bytes, max_batch=2, wait_ms=0, observe_batch=lambda n: None)
    queries = [SketchQuery(bytes([i]), 0, {}) for i in range(5)]
    for query in queries:
        batcher.add(query)
    batcher.drain(queries[2])   # batches [0, 1] and [2, 3]
    assert engine.forwards == [2, 2] and [q.future.done() for q in queries] == [True] * 4 + [False]
    assert [q.future.result() for q in queries[:4]] == [bytes([i]) for i in range(4)]
    batcher.drain(queries[1])   # taken already: nothing to do
    assert engine.forwards == [2, 2]
    batcher.drain(queries[4])
    assert queries[4].future.result() == bytes([4]) and engine.forwards == [2, 2, 1]


def test_a_query_still_pending_at_shutdown_is_refused():
    from s2m_retrieval.service.batching import SketchBatcher, SketchQuery, Stopping

    batcher = SketchBatcher(engine=None, decode=bytes, max_batch=4, wait_ms=0, observe_batch=lambda n: None)
    query = SketchQuery(b"png", 0, {})
    future = batcher.add(query)
    batcher.close()
    with pytest.raises(Stopping, match="stopping"):
        future.result(timeout=1)
    batcher.drain(query)  # refused already: returns at once
