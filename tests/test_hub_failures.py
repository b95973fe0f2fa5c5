"""Every failure mode of a remote weights source ends fast, in one line naming the cause and the local fix.

A fake hub on 127.0.0.1 answers 5xx, 401, 404, or accepts the connection and never answers;
another fake server plays an HTTP proxy. Loopback only, bounded waits.
"""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from entrep.encoders import build_image_encoder
from entrep.errors import WeightsError


class _Hub(http.server.BaseHTTPRequestHandler):
    mode = "503"
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).seen.append(self.path)
        if self.mode == "hang":
            time.sleep(6)
            return
        code = int(self.mode)
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_HEAD = do_GET

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    """Start a fake hub; returns a setter for its behaviour. The hub is the only endpoint entrep sees."""
    handler = type("Hub", (_Hub,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("ENTREP_HUB_TIMEOUT", "2")

    def set_mode(mode: str):
        handler.mode = mode
        return handler

    yield set_mode
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode, cause", [
    ("503", "hub error"), ("500", "hub error"), ("401", "auth"), ("403", "auth"), ("404", "missing file"),
    ("hang", "did not answer within 2 s"),
])
def test_each_hub_failure_is_one_line_with_its_cause_and_the_local_fix(fake_hub, mode, cause):
    handler = fake_hub(mode)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        build_image_encoder("dinov2-vits14")
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert took < 30, f"{mode}: took {took:.1f} s"
    assert cause in msg and "\n" not in msg
    assert "ENTREP_WEIGHTS_DINOV2_VITS14=" in msg  # how to point at local weights
    asked = [p for p in handler.seen if "/api/models/" in p or "/resolve/" in p]
    assert len(asked) == 1  # asked once, no download attempted: no retry storm


def test_proxies_from_the_environment_are_used(fake_hub, monkeypatch):
    import os

    handler = fake_hub("404")
    port = int(os.environ["HF_ENDPOINT"].rsplit(":", 1)[1])
    # the hub's name resolves nowhere: only a proxy can carry the request (the fake server plays the proxy)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.entrep-test.invalid")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(WeightsError) as e:
        build_image_encoder("dinov2-vits14")
    assert "missing file" in str(e.value)
    assert any(p.startswith("http://hub.entrep-test.invalid/api/models/") for p in handler.seen)
