"""The demo in a real headless browser (Debian's chromium, driven by playwright): upload photos, see the analysis,
move a slider, see the landmark preview change. Screenshots go to ``test-artifacts/demo/``.

Set ``HIFI_PORTRAIT_DOCS_SCREENSHOT=1`` to also refresh ``docs/img/demo.png``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from demo_photos import BIDEN, OBAMAS

from hifi_portrait.demo import callbacks as cb
from hifi_portrait.demo.app import PREVIEW_SIZE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "demo.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver; .ci/run "
        "installs it when run as root)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(analyzer, landmark_backend):
    from hifi_portrait.demo import build_demo, launch_demo

    demo = build_demo(analyzer, landmark_backend, max_queue=8, max_upload_mb=5)
    _, url = launch_demo(demo, host="127.0.0.1", port=free_port())
    assert url.startswith("http://127.0.0.1:")
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _shown_preview(page) -> np.ndarray:
    return _decode(page.request.get(page.get_attribute("#preview img", "src")).body())


def _wait_for_preview(page, expected: np.ndarray, timeout_s: float = 30.0) -> np.ndarray:
    """Poll the displayed preview until it equals ``expected`` (the callback's own rendering) or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = _shown_preview(page)
        if shown.shape == expected.shape and np.array_equal(shown, expected):
            return shown
        if time.monotonic() > deadline:
            diff = np.abs(shown.astype(int) - expected.astype(int)).max() if shown.shape == expected.shape else None
            raise AssertionError(f"the page's preview never matched the expected map (max diff {diff})")
        page.wait_for_timeout(250)


def test_upload_analyse_and_live_preview(server, browser, artifacts_dir, mixed_view, analyzer, landmark_backend):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server, timeout=30_000)

    # the neutral canonical face is previewed before any upload
    page.wait_for_selector("#preview img", timeout=30_000)
    src_start = page.get_attribute("#preview img", "src")

    page.set_input_files("#refs input[type=file]", [str(p) for p in [*OBAMAS, BIDEN]])
    page.wait_for_function("document.querySelector('#warnings').innerText.includes('biden.jpg')", timeout=60_000)
    warnings = page.inner_text("#warnings")
    assert "different person" in warnings and "3 kept" in warnings
    assert page.locator("#crops img").count() >= 4
    assert "probably a different person" in page.inner_text("#analysis-table")
    # after the analysis the preview shows the references' own face shape
    page.wait_for_function(f"document.querySelector('#preview img').src !== {src_start!r}", timeout=30_000)
    before_src = page.get_attribute("#preview img", "src")
    before = page.request.get(before_src).body()

    # move the yaw slider with the keyboard, as a user would
    page.locator("#yaw input[type=range]").focus()
    for _ in range(25):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#preview img').src !== {before_src!r}", timeout=30_000)
    assert page.locator("#yaw input[type=number]").input_value() == "25"
    # the preview settles on the final slider value ("always_last"): exactly the callback's map for yaw 25 of the
    # same references' shape (PNG is lossless)
    expected = cb.render_preview(mixed_view.state, cb.TargetSpec(yaw=25), landmark_backend, size=PREVIEW_SIZE)
    _wait_for_preview(page, expected)
    after = page.request.get(page.get_attribute("#preview img", "src")).body()
    assert before != after
    a, b = _decode(before), _decode(after)
    assert a.shape == b.shape and a.max() > 0 and b.max() > 0
    assert (np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 30).mean() > 0.01, "the map barely changed"

    # a preset also updates the preview
    src_before_preset = page.get_attribute("#preview img", "src")
    page.locator("#preset input").click()
    page.get_by_role("option", name="smile", exact=True).click()
    assert page.locator("#preset input").input_value() == "smile"
    page.wait_for_function(f"document.querySelector('#preview img').src !== {src_before_preset!r}", timeout=30_000)

    # a driver photo: its pose and expression replace the sliders' (its face shape is not used)
    page.get_by_text("Driver photo (copy its pose").click()
    page.set_input_files("#driver input[type=file]", str(BIDEN))
    page.wait_for_function("document.querySelector('#driver-info').innerText.includes('biden.jpg')", timeout=60_000)
    assert page.locator("#source input[value='driver photo']").is_checked()
    page.wait_for_function("document.querySelector('#yaw input[type=range]').disabled", timeout=10_000)
    driver, _ = cb.analyze_driver(str(BIDEN), analyzer)
    _wait_for_preview(
        page, cb.render_preview(mixed_view.state, cb.TargetSpec(driver=driver), landmark_backend, size=PREVIEW_SIZE)
    )

    # without weights the page says which files generation needs, and the button is off
    status = page.inner_text("#weights-status")
    assert "SDXL base" in status and "--adapter" in status and "CLIP vision encoder" in status
    assert page.locator("#generate").is_disabled()

    shot = artifacts_dir / "demo_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HIFI_PORTRAIT_DOCS_SCREENSHOT") == "1":  # the upper part of the page, 256 colours
        from PIL import Image

        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        top = Image.open(io.BytesIO(page.screenshot(clip={"x": 0, "y": 0, "width": 1400, "height": 1160})))
        top.convert("RGB").quantize(256).save(DOCS_SCREENSHOT, optimize=True)
    elif DOCS_SCREENSHOT.exists():
        shutil.copyfile(DOCS_SCREENSHOT, artifacts_dir / "docs_demo_committed.png")
    assert not errors, errors
    page.close()
