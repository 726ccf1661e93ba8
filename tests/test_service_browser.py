"""The sketch page in a real browser: Playwright drives Debian's chromium (headless) against a live server.

Draws strokes with the mouse (and a pen and a finger through pointer events), searches, finds result cards, filters,
clicks "more like this"; checks that nothing is fetched from another host. The screenshot is kept as a test
artefact under test-artifacts/ (or $S2M_TEST_ARTIFACTS). In CI ($CI or $S2M_REQUIRE_BROWSER set, as .ci/run does) a
missing browser fails the test; elsewhere it skips, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from retrieval_helpers import phantom_sketch

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("S2M_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("S2M_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _unavailable(why: str):
    if os.environ.get("CI") or os.environ.get("S2M_REQUIRE_BROWSER"):
        pytest.fail(f"the browser test must run in CI, but {why}: `bash .ci/chromium.sh` installs chromium")
    pytest.skip(f"no browser test: {why}; `bash .ci/chromium.sh` installs chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]' adds it)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _unavailable(f"chromium is not installed at {CHROMIUM}")
    with sync_playwright() as pw:
        # Never Playwright's own browser download: the system chromium, no sandbox (containers), no phoning home.
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-background-networking"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def base_url(setup):
    from s2m_retrieval.query.engine import RetrievalEngine
    from s2m_retrieval.service import create_app
    from s2m_retrieval.service.server import background_server

    with RetrievalEngine.open("default", home=setup.home, models=setup.models) as engine:
        with background_server(create_app(engine)) as url:
            yield url


def _stroke(page, box, points):
    """One mouse stroke through points given in [0, 1] canvas coordinates."""
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0] * box["width"], y0 + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * box["width"], y0 + y * box["height"], steps=6)
    page.mouse.up()


INK = """() => { const c = document.getElementById('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }"""

POINTER = """([kind, x0, y0, x1, y1]) => { const c = document.getElementById('canvas');
  const r = c.getBoundingClientRect();
  const ev = (type, t) => c.dispatchEvent(new PointerEvent(type, { pointerId: 7, pointerType: kind, isPrimary: true,
    bubbles: true, cancelable: true, button: 0, buttons: type === 'pointerup' ? 0 : 1, pressure: kind === 'pen' ? 0.8 : 0.5,
    clientX: r.left + (x0 + (x1 - x0) * t) * r.width, clientY: r.top + (y0 + (y1 - y0) * t) * r.height }));
  ev('pointerdown', 0); for (let i = 1; i <= 10; i++) ev('pointermove', i / 10); ev('pointerup', 1); }"""


def test_draw_search_filter_and_more_like_this(browser, base_url, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(20_000)
    foreign, errors = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def only_this_server(route):
        if route.request.url.startswith(base_url):
            route.continue_()
        else:  # the page must work offline
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(base_url + "/")
    page.wait_for_selector("#index-info:has-text('24 images')")
    assert page.locator("select[data-column='tonsil_grade'] option").count() == 6  # any + grades 0..4

    page.click("#search")  # nothing drawn yet: the server's message is shown
    page.wait_for_selector("#status.error")
    assert "sketch is empty" in page.inner_text("#status")

    box = page.locator("#canvas").bounding_box()
    _stroke(page, box, [(0.15, 0.8), (0.2, 0.4), (0.35, 0.2), (0.5, 0.15), (0.65, 0.2), (0.8, 0.4), (0.85, 0.8)])
    _stroke(page, box, [(0.5, 0.2), (0.5, 0.45), (0.45, 0.55), (0.5, 0.6), (0.55, 0.55), (0.5, 0.45)])
    _stroke(page, box, [(0.1, 0.9), (0.5, 0.75), (0.9, 0.9)])
    mouse_ink = page.evaluate(INK)
    assert mouse_ink > 300
    page.evaluate(POINTER, ["pen", 0.25, 0.55, 0.35, 0.7])
    pen_ink = page.evaluate(INK)
    page.evaluate(POINTER, ["touch", 0.75, 0.55, 0.65, 0.7])
    assert mouse_ink < pen_ink < page.evaluate(INK)
    page.click("#undo")
    assert page.evaluate(INK) == pen_ink
    page.click("#eraser")
    _stroke(page, box, [(0.2, 0.55), (0.4, 0.75)])  # across the pen stroke
    assert page.evaluate(INK) < pen_ink
    page.click("#undo")
    page.click("#pen")
    assert page.evaluate(INK) == pen_ink

    with page.expect_response("**/v1/retrieve") as answer:
        page.click("#search")
    assert answer.value.status == 200
    page.wait_for_selector("#grid li.card")
    assert page.locator("#grid li.card").count() == 12
    assert page.get_attribute("#query-image", "src").startswith("data:image/png;base64,")
    assert "x̂" in page.inner_text("#query-caption")
    first = page.locator("#grid li.card").first
    assert first.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    assert "#1 · score" in first.inner_text() and "tonsil grade" in first.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "service-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    page.select_option("select[data-column='tonsil_grade']", "3")
    with page.expect_response("**/v1/retrieve") as answer:
        page.click("#search")
    filtered = answer.value.json()
    assert filtered["provenance"]["where"] == ["tonsil_grade=3"]
    page.wait_for_selector("#status:has-text('filters tonsil_grade=3')")
    assert page.locator("#grid li.card").count() == len(filtered["hits"]) > 0
    assert all(h["labels"]["tonsil_grade"] == 3 for h in filtered["hits"])

    target = page.locator("#grid li.card").nth(1)
    image_id = int(target.get_attribute("data-id"))
    with page.expect_response("**/v1/retrieve") as answer:
        target.locator("button").click()
    body = json.loads(answer.value.request.post_data)
    assert body["like"] == image_id and "sketch" not in body
    page.wait_for_selector(f"#status:has-text('like image {image_id}')")
    assert page.locator("#grid li.card").first.get_attribute("data-id") == str(image_id)
    assert page.inner_text("#query-caption") == f"query: image {image_id}"

    page.click("#clear")
    assert page.evaluate(INK) == 0
    sketch = tmp_path / "sketch.png"
    Image.fromarray(phantom_sketch(size=128)).save(sketch)
    page.set_input_files("#upload", str(sketch))
    page.wait_for_selector("#status:has-text('Loaded sketch.png')")
    assert page.evaluate(INK) > 100
    page.select_option("select[data-column='tonsil_grade']", "")
    with page.expect_response("**/v1/retrieve") as answer:
        page.click("#search")
    assert answer.value.status == 200 and len(answer.value.json()["hits"]) == 12

    assert foreign == [] and errors == []
    page.close()
