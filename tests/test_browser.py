"""The search page in a real headless Chromium, against a real uvicorn server on loopback.

Needs Debian's ``chromium`` and ``chromium-driver``. Without them these tests
are skipped, unless ENTREP_REQUIRE_BROWSER=1 (set by CI), where they fail.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("ENTREP_REQUIRE_BROWSER") == "1"
WAIT_S = 60


def _missing() -> str | None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    if not missing:
        return None
    return (f"browser tests need {', '.join(missing)} (Debian: apt-get install chromium chromium-driver; "
            "pip install selenium)")


if _missing() and not REQUIRED:  # skip before the (slow) model fixture is built
    pytest.skip(_missing(), allow_module_level=True)


def _need_browser() -> None:
    msg = _missing()
    if msg:
        pytest.fail(msg + " and ENTREP_REQUIRE_BROWSER=1 is set")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """A real uvicorn server on a free loopback port, in a background thread."""
    _need_browser()
    import uvicorn

    from entrep.server.app import create_app

    app = create_app(tiny_model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run", "--lang=en-US"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, cond, what):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(cond)
    except Exception as e:  # noqa: BLE001 - a readable failure beats a bare TimeoutException
        msg = driver.find_element("id", "message-text").text
        pytest.fail(f"timed out waiting for {what}; page message: {msg!r} ({type(e).__name__})")


def _open(driver, server):
    driver.get(server + "/")
    _wait(driver, lambda d: "gallery images" in d.find_element("id", "model-info").text, "the model summary")


def _loaded_thumbs(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results img.thumb')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length")


def test_upload_shows_prediction_and_similar_images(browser, server, tiny_model_dir, tmp_path):
    from entrep.model import load_model

    gallery = load_model(tiny_model_dir).gallery.items
    _open(browser, server)
    browser.find_element("id", "file-input").send_keys(str(Path(gallery[0].path).resolve()))
    _wait(browser, lambda d: d.find_element("id", "pred-label").text.strip(), "the prediction")
    _wait(browser, lambda d: _loaded_thumbs(d) >= 1, "result thumbnails")
    label = browser.find_element("id", "pred-label").text.strip()
    assert label in {it.label for it in gallery}
    assert "confidence" in browser.find_element("id", "pred-meta").text
    assert "prototypes" in browser.find_element("id", "pred-source").text
    assert len(browser.find_elements("css selector", "#prob-bars .prob-row")) == 7
    assert browser.find_element("id", "message").is_displayed() is False
    cards = browser.find_elements("css selector", "#results .result-card")
    assert 1 <= len(cards) <= 10
    assert all(c.find_element("css selector", ".score").text for c in cards)

    _screenshot(browser, tmp_path / "page-image-query.png")


def _screenshot(browser, shot: Path) -> None:
    """Save a screenshot, check it is not blank, and keep a copy in $ENTREP_SCREENSHOT_DIR if set."""
    browser.save_screenshot(str(shot))
    _check_not_blank(shot)
    keep = os.environ.get("ENTREP_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_text_query_shows_matching_images(browser, server, tmp_path):
    _open(browser, server)
    box = browser.find_element("id", "text-input")
    box.clear()
    box.send_keys("a spur on the septum")
    browser.find_element("id", "text-button").click()
    _wait(browser, lambda d: "a spur on the septum" in d.find_element("id", "results-title").text, "the results title")
    _wait(browser, lambda d: _loaded_thumbs(d) >= 1, "text search thumbnails")

    # Restricting to one class through the dropdown re-runs the query.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "filter-select")).select_by_value("ear-right")
    _wait(browser, lambda d: d.find_elements("css selector", "#results .label-chip") and all(
        e.text == "ear-right" for e in d.find_elements("css selector", "#results .label-chip")), "filtered results")

    _screenshot(browser, tmp_path / "page-text-query.png")


def test_bad_upload_shows_a_visible_error(browser, server, tmp_path):
    _open(browser, server)
    bad = tmp_path / "notes.png"
    bad.write_text("not really a picture")
    browser.find_element("id", "file-input").send_keys(str(bad))
    _wait(browser, lambda d: d.find_element("id", "message").is_displayed(), "the error message")
    text = browser.find_element("id", "message-text").text
    assert "not an image" in text


def test_report_link_opens_the_report(browser, server):
    _open(browser, server)
    link = browser.find_element("id", "report-link")
    _wait(browser, lambda d: link.is_displayed(), "the report link")
    browser.get(link.get_attribute("href"))
    assert "report" in browser.title.lower()
    assert browser.find_elements("css selector", "h1")


def _check_not_blank(path: Path) -> None:
    im = Image.open(path).convert("RGB")
    a = np.asarray(im, dtype=np.float32)
    assert a.std() > 20, f"screenshot {path} looks blank (pixel std {a.std():.1f})"
    small = np.asarray(im.resize((200, 150)).quantize(64).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(small, axis=0)) >= 8, "screenshot has too few distinct colours"
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert len(buf.getvalue()) > 20_000


def test_file_names_with_markup_or_html_are_shown_as_text(browser, server, tmp_path):
    _open(browser, server)
    name = "[bold]left[red] <img src=x onerror=window.pwned=1> ear 0042.png"  # no "/": it is a file name
    bad = tmp_path / name
    bad.write_text("not really a picture")
    browser.find_element("id", "file-input").send_keys(str(bad))
    _wait(browser, lambda d: d.find_element("id", "message").is_displayed(), "the error message")
    assert browser.find_element("id", "message-text").text.startswith(name)
    assert not browser.find_elements("css selector", "#message img")
    assert browser.execute_script("return window.pwned === undefined")


EVIL_PAGE = """<!doctype html><html><body><form id=f method=post enctype=multipart/form-data action="{target}">
<input type=file name=file id=i></form><script>
const dt = new DataTransfer();
dt.items.add(new File([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10])], "a.png", {{type: "image/png"}}));
document.getElementById("i").files = dt.files;
document.getElementById("f").submit();
</script></body></html>"""


def test_another_sites_page_cannot_post_an_upload(browser, server, tmp_path):
    """A page elsewhere (here: another port) submitting a multipart form to the server gets 403."""
    import functools
    import http.server

    (tmp_path / "evil.html").write_text(EVIL_PAGE.format(target=server + "/api/classify"), encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/evil.html")
        _wait(browser, lambda d: "cross-site request refused" in d.page_source, "the refusal")
    finally:
        evil.shutdown()
        evil.server_close()
