"""The HTTP API fuzzed from its own /openapi.json (issue 19, schemathesis): no generated request is a server error,
and every response conforms to what the app documents (status codes, content types, JSON schemas).

Requests are schemathesis' own, valid and invalid by the schema, some of them then given an indexed image id or a
real image as the sketch (of many kinds: a clean sketch, blank, 1x1, 16-bit, RGBA, JPEG, GIF, truncated, text), so
that generated options reach the models and not only the parsers.
"""

from __future__ import annotations

import base64
import io
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

pytest.importorskip("fastapi", reason="the service tests need the service extra: pip install -e '.[test]'")
schemathesis = pytest.importorskip("schemathesis", reason="the API fuzzing needs schemathesis: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from s2m_retrieval.service import create_app  # noqa: E402

REQUESTS = 300  # generated requests per operation that takes inputs (one each for those that take none)
OPERATIONS = [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/index"), ("POST", "/v1/retrieve"),
              ("POST", "/v1/generate"), ("GET", "/v1/images/{image_id}"), ("GET", "/v1/images/{image_id}/meta")]
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance]
TALLY: dict[tuple[str, str], Counter] = defaultdict(Counter)  # status codes answered, per operation


def _encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format=fmt)
    return buf.getvalue()


SKETCH = phantom_sketch()
SKETCHES = [_encoded(SKETCH), _encoded(SKETCH, "JPEG"), _encoded(SKETCH, mode="RGBA"),
            _encoded((SKETCH.astype(np.uint16) * 257)), _encoded(np.full((64, 64), 255, np.uint8)),
            _encoded(np.zeros((1, 1), np.uint8)), _encoded(SKETCH, "GIF"), _encoded(SKETCH)[:60], b"sketch,target_id\n"]


@pytest.fixture(scope="module")
def api_schema(setup):
    from s2m_retrieval.query.engine import RetrievalEngine

    with RetrievalEngine.open("default", home=setup.home, models=setup.models) as engine:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(engine))


@st.composite
def requests(draw, operation):
    """A schemathesis case (valid or invalid by the schema); sometimes pointed at an indexed image id, or carrying
    a real image as its sketch (base64 or a data: URL in JSON, a file part in multipart)."""
    mode = draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
    if "{image_id}" in operation.path and draw(st.booleans()):
        case = draw(operation.as_strategy(mode, path_parameters={"image_id": draw(st.integers(0, 30))}))
    else:
        case = draw(operation.as_strategy(mode))
    if isinstance(case.body, dict) and draw(st.integers(0, 3)) == 0:
        body = dict(case.body)
        if operation.path.endswith("retrieve") and draw(st.booleans()):
            body.pop("sketch", None)
            body["like"] = draw(st.integers(0, 30))
        else:
            data = draw(st.sampled_from(SKETCHES))
            if case.media_type == "application/json":
                text = base64.b64encode(data).decode()
                body["sketch"] = draw(st.sampled_from([text, "data:image/png;base64," + text]))
            else:
                body["sketch"] = data
        case.body = body
    return case


def test_every_operation_is_fuzzed(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests(api_schema, method, path):
    operation = api_schema[path][method]
    tally = TALLY[(method, path)]

    @settings(max_examples=REQUESTS, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=requests(operation))
    def run(case):
        response = case.call_and_validate(checks=CHECKS)
        tally[response.status_code] += 1

    run()
    print(f"{method} {path}: {sum(tally.values())} requests, status {dict(sorted(tally.items()))}")
    if operation.path not in ("/healthz", "/metrics", "/v1/index"):
        assert sum(tally.values()) >= REQUESTS and 200 in tally, tally  # the successes were reached too


def test_app_served_again_after_a_shutdown_still_answers(setup):
    # Found by the fuzzing (its transport runs the app's lifespan per request): the first shutdown stopped the
    # query threads for good, and every later query was a 500.
    from fastapi.testclient import TestClient

    from s2m_retrieval.query.engine import RetrievalEngine

    with RetrievalEngine.open("default", home=setup.home, models=setup.models) as engine:
        app = create_app(engine)
        for _ in range(2):
            with TestClient(app) as client:
                response = client.post("/v1/retrieve", json={"like": 3, "k": 2})
                assert response.status_code == 200, response.text
                assert response.json()["hits"][0]["id"] == 3
