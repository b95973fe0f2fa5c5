"""The server against hostile pages and uploads: hosts, cross-site requests, formats, load, queries, errors."""

from __future__ import annotations

import io
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import entrep
from entrep.errors import ModelError
from entrep.server.app import create_app
from entrep.server.hosts import HostPolicy

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server-cache")


@pytest.fixture(scope="module")
def model(tiny_model_dir, cache_dir):
    return entrep.load(tiny_model_dir, cache=cache_dir)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model), base_url=BASE) as c:
        yield c


def png(size=(64, 48), colour=(120, 30, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def upload(name="a.png", data=None, mime="image/png"):
    return {"file": (name, png() if data is None else data, mime)}


# ---- Host policy -------------------------------------------------------------
@pytest.mark.parametrize("bind, allow, ok, refused", [
    ("127.0.0.1", (), ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"], ["evil.example", "192.168.1.5:8000"]),
    ("127.0.0.2", (), ["127.0.0.2:8000", "localhost"], ["evil.example:8000", "10.0.0.2"]),
    ("::1", (), ["[::1]:8000", "localhost:8000"], ["evil.example", "[fe80::1]:8000"]),
    ("0.0.0.0", (), ["192.168.1.5:8000", "127.0.0.1:8000", "localhost"], ["rebind.evil.example:8000"]),
    ("::", (), ["[2001:db8::5]:8000", "10.1.2.3", "localhost"], ["rebind.evil.example"]),
    ("192.168.1.5", (), ["192.168.1.5:8000"], ["ent-pc.local:8000", "10.0.0.9", "evil.example"]),
    ("192.168.1.5", ("ENT-PC.local",), ["ent-pc.local:8000", "192.168.1.5"], ["evil.example"]),
    ("0.0.0.0", ("*",), ["anything.example:1"], []),
])
def test_host_policy_for_every_kind_of_bind_address(bind, allow, ok, refused):
    policy = HostPolicy.for_bind(bind, allow)
    for host in ok:
        assert policy.allows(host), (bind, host)
    for host in refused:
        assert not policy.allows(host), (bind, host)


def test_a_non_default_loopback_bind_answers_its_own_url_and_nothing_else(model):
    with TestClient(create_app(model, host="127.0.0.2"), base_url="http://127.0.0.2:8000") as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/healthz", headers={"Host": "evil.example:8000"})
        assert r.status_code == 400 and "--allow-host" in r.json()["detail"]


def test_a_lan_bind_checks_host_too(model):
    with TestClient(create_app(model, host="0.0.0.0", allow_hosts=("ent-pc.local",)), base_url=BASE) as c:
        assert c.get("/healthz", headers={"Host": "ent-pc.local:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "192.168.1.5:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "rebind.evil.example:8000"}).status_code == 400


# ---- cross-site requests --------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:9999"},  # another local server's page
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1"},
])
def test_cross_site_uploads_are_refused(client, headers):
    r = client.post("/api/classify", files=upload(), headers=headers)
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]


def test_same_origin_page_and_plain_clients_keep_working(client):
    assert client.post("/api/classify", files=upload()).status_code == 200  # curl / Python: no Origin
    same = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/classify", files=upload(), headers=same).status_code == 200
    assert client.get("/api/search", params={"q": "polyp"}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to the page


def test_cross_site_api_reads_are_refused(client):
    r = client.get("/api/search", params={"q": "polyp"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403


# ---- uploads ----------------------------------------------------------------
def test_two_file_parts_are_refused(client):
    files = [("file", ("a.png", png(), "image/png")), ("file", ("b.png", png(colour=(0, 90, 0)), "image/png"))]
    for path in ("/api/classify", "/api/search"):
        r = client.post(path, files=files)
        assert r.status_code == 400 and "'file'" in r.json()["detail"], (path, r.text)


def test_undocumented_formats_are_refused_before_any_decoder_runs(client, monkeypatch):
    from PIL import EpsImagePlugin

    def decoder_ran(self, *a, **k):
        raise AssertionError("the EPS decoder was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", decoder_ran)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    r = client.post("/api/classify", files=upload("x.eps", eps, "application/postscript"))
    assert r.status_code == 415, r.text
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="GIF")
    assert client.post("/api/classify", files=upload("x.gif", buf.getvalue(), "image/gif")).status_code == 415


def test_sixteen_bit_upload_is_classified(client):
    a = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    assert client.post("/api/classify", files=upload("deep.png", buf.getvalue())).json()["label"]


def test_markup_and_html_in_file_names_come_back_verbatim(client):
    name = "[bold red]left[/] <img src=x onerror=alert(1)> ear 0042.png"
    assert client.post("/api/classify", files=upload(name)).json()["image"] == name
    r = client.post("/api/classify", files=upload(name, b"not an image"))
    assert r.status_code == 415 and r.json()["detail"].startswith(name + ":")


# ---- bounded work -------------------------------------------------------------
def test_requests_wait_for_a_work_slot_and_get_503_when_none_frees_up(model):
    app = create_app(model, max_concurrent=1, queue_timeout_s=0.05)
    state = app.state.entrep
    with TestClient(app, base_url=BASE) as c:
        with state.work():  # the only slot is busy
            r = c.post("/api/classify", files=upload())
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        assert c.post("/api/classify", files=upload()).status_code == 200


def test_concurrent_uploads_decode_at_most_max_concurrent_at_once(model):
    app = create_app(model, max_concurrent=2, queue_timeout_s=60)
    state = app.state.entrep
    active, peak, guard = [0], [0], threading.Lock()
    gate = threading.Barrier(2, timeout=5)
    read = state.read_upload

    def counted(file):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            with contextlib_suppress_broken():
                gate.wait()  # two decodes really overlap
            return read(file)
        finally:
            with guard:
                active[0] -= 1

    state.read_upload = counted
    codes = []

    def worker():
        with TestClient(app, base_url=BASE) as c:
            codes.append(c.post("/api/classify", files=upload()).status_code)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [200] * 6 and peak[0] == 2


def contextlib_suppress_broken():
    import contextlib

    return contextlib.suppress(threading.BrokenBarrierError)


# ---- text queries ---------------------------------------------------------------
def _files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_text_queries_are_kept_in_memory_bounded_and_match_the_library(model, cache_dir):
    from entrep.retrieval.search import search_text

    app = create_app(model, text_queries=3)
    vectors = app.state.entrep.searcher.text_vectors
    with TestClient(app, base_url=BASE) as c:
        c.get("/api/search", params={"q": "warm-up"})
        before = _files_under(cache_dir)
        got = [c.get("/api/search", params={"q": f"a spur on the septum {i}", "k": 5}).json() for i in range(6)]
        assert _files_under(cache_dir) == before  # nothing written per query
    assert len(vectors) == 3
    want = search_text(model, "a spur on the septum 5", k=5)
    assert [h["id"] for h in got[-1]["results"]] == [h["id"] for h in want["results"]]
    assert [h["score"] for h in got[-1]["results"]] == pytest.approx([h["score"] for h in want["results"]], abs=1e-5)


@pytest.mark.parametrize("error", [ModelError("/srv/secret/cache/texts.sqlite: corrupt feature cache"),
                                   sqlite3.DatabaseError("database disk image is malformed: /srv/secret/x")])
def test_a_broken_text_encoder_or_cache_is_one_json_line_without_paths_when_hidden(model, error):
    class BrokenExtractor:
        def text_encoder(self):
            raise error

    for hide in (True, False):
        app = create_app(model, hide_names=hide)
        app.state.entrep.searcher.text_vectors.model = SimpleNamespace(extractor=BrokenExtractor())
        with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
            r = c.get("/api/search", params={"q": "polyp"})
        assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
        detail = r.json()["detail"]
        assert "\n" not in detail
        if hide or not isinstance(error, ModelError):
            assert "/srv/secret" not in detail and "server's log" in detail


def test_large_uploads_are_shrunk_right_after_decoding(model):
    from fastapi import UploadFile

    from entrep.server.state import MAX_DECODED_SIDE

    state = create_app(model).state.entrep
    image = state.read_image(UploadFile(file=io.BytesIO(png((4100, 300))), filename="wide.png"))
    assert image.size == (MAX_DECODED_SIDE, 150) and image.info["sha256"]
    small = state.read_image(UploadFile(file=io.BytesIO(png((640, 480))), filename="frame.png"))
    assert small.size == (640, 480)
