"""HTTP API of `entrep serve`: every endpoint, every bad input, limits, hidden names."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from entrep.data.images import load_rgb
from entrep.server.app import create_app, is_loopback, label_parts
from entrep.taxonomy import ENT, Taxonomy

BASE = "http://127.0.0.1"


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from entrep.model import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def app(model):
    return create_app(model)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def hidden_client(model):
    with TestClient(create_app(model, hide_names=True), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def gallery_items(model):
    return model.gallery.items


@pytest.fixture(scope="module")
def sample(gallery_items):
    """(file name, PNG bytes, true label) of a real gallery image."""
    it = gallery_items[0]
    return Path(it.path).name, Path(it.path).read_bytes(), it.label


def png_bytes(size=(64, 48), colour=(120, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    raw = bytearray(png_bytes((1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(raw)


def upload(name, data, mime="image/png"):
    return {"file": (name, data, mime)}


# ---------------------------------------------------------------------------
# facts
# ---------------------------------------------------------------------------


def test_healthz_reports_model_gallery_and_classes(client, model):
    r = client.get("/healthz")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["model_loaded"] is True
    assert h["gallery_size"] == len(model.gallery) > 0
    assert h["classes"] == list(model.taxonomy.classes)
    assert set(h["groups"]) == {"nose", "ear", "vc", "throat"}
    assert h["report"] is True
    assert h["max_upload_bytes"] == 20 * 1024 * 1024


def test_classes_give_groups_and_side_or_state(client):
    info = client.get("/api/classes").json()
    by = {c["name"]: c for c in info["classes"]}
    assert list(by) == list(ENT.classes)
    assert [by[c]["id"] for c in ENT.classes] == list(range(len(ENT.classes)))
    assert by["nose-left"]["group"] == "nose" and by["nose-left"]["side"] == "left" and by["nose-left"]["state"] is None
    assert by["ear-right"]["side"] == "right"
    assert by["vc-open"]["state"] == "open" and by["vc-open"]["side"] is None
    assert by["throat"]["side"] is None and by["throat"]["state"] is None
    groups = {g["name"]: g["classes"] for g in info["groups"]}
    assert groups["vc"] == ["vc-open", "vc-closed"] and groups["throat"] == ["throat"]
    assert info["image_filters"]["default"] in ("fine", "coarse", "none")


def test_label_parts_is_generic():
    tax = Taxonomy(name="custom", classes=("sinus_maxillary", "sinus_frontal", "lobe-a", "lobe-b", "other"),
                   groups={"sinus_maxillary": "sinus", "sinus_frontal": "sinus", "lobe-a": "lobe", "lobe-b": "lobe",
                           "other": "other"},
                   mirrors={"lobe-a": "lobe-b", "lobe-b": "lobe-a"})
    assert label_parts(tax, "sinus_frontal") == {"side": None, "state": "frontal"}
    assert label_parts(tax, "lobe-b") == {"side": "b", "state": None}
    assert label_parts(tax, "other") == {"side": None, "state": None}
    flat = Taxonomy(name="flat", classes=("cat", "dog"))
    assert label_parts(flat, "dog") == {"side": None, "state": None}


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


# ---------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------


def test_classify_matches_the_library(client, model, sample):
    name, data, _ = sample
    r = client.post("/api/classify", files=upload(name, data))
    assert r.status_code == 200, r.text
    p = r.json()
    want = model.predict([load_rgb(data)])[0]
    assert p["label"] == want["label"] and p["label_id"] == want["label_id"]
    assert p["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    assert p["source"] == want["source"] in ("prototype", "head")
    assert p["group"] == model.taxonomy.group_of(p["label"])
    assert {k: p[k] for k in ("side", "state")} == label_parts(model.taxonomy, p["label"])
    assert set(p["probabilities"]) == set(model.taxonomy.classes)
    assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert p["image"] == name


def test_classify_reads_jpeg_and_grayscale(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160), dtype=np.uint8), "L").save(buf, "JPEG")
    r = client.post("/api/classify", files=upload("frame.jpg", buf.getvalue(), "image/jpeg"))
    assert r.status_code == 200, r.text
    assert r.json()["label"] in ENT.classes


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"this is a clinical note, not a picture", 415, "not an image"),
        (b"", 400, "empty"),
        (None, 400, "truncated"),  # filled in below: half of a real PNG
        ("jpeg", 400, "truncated"),  # half of a real JPEG (a JPEG is checked by a decode at 1/8 scale)
        (forged_png(9_000, 6_000), 400, "pixels"),  # over the server's 50 MP limit
        (forged_png(40_000, 40_000), 400, "pixels"),  # PIL's own bomb guard
    ],
    ids=["not-an-image", "empty", "truncated", "truncated-jpeg", "over-pixel-limit", "decompression-bomb"],
)
@pytest.mark.parametrize("path", ["/api/classify", "/api/search"])
def test_bad_uploads_get_clear_4xx(client, sample, path, data, status, words):
    if data is None:
        data = sample[1][: len(sample[1]) // 2]
    elif data == "jpeg":
        buf = io.BytesIO()
        Image.open(io.BytesIO(sample[1])).convert("RGB").resize((1280, 960)).save(buf, format="JPEG")
        data = buf.getvalue()[: len(buf.getvalue()) // 2]
    r = client.post(path, files=upload("scan.png", data))
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail.lower()


@pytest.mark.parametrize("path", ["/api/classify", "/api/search"])
def test_missing_file_field_is_422(client, path):
    r = client.post(path, data={"k": "3"})
    assert r.status_code == 422
    assert "file" in json.dumps(r.json()["detail"])


# ---------------------------------------------------------------------------
# upload size limit
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit_client(model):
    with TestClient(create_app(model, max_upload_bytes=20_000), base_url=BASE) as c:
        yield c


def noisy_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_upload_over_limit_is_413_from_content_length(small_limit_client):
    big = noisy_png(200)  # ~120 kB
    assert len(big) > 100_000
    r = small_limit_client.post("/api/classify", files=upload("big.png", big))
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_upload_over_limit_is_413_while_streaming(small_limit_client):
    """No Content-Length (chunked): the body is counted as it arrives and refused at the limit."""
    boundary = "entrepboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(400):
            yield b"\0" * 1000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_limit_client.post("/api/classify", content=body(),
                                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_real_server_stops_reading_a_chunked_upload_at_the_limit(model):
    """Against uvicorn on loopback: the 413 comes back while the client is still sending."""
    import select
    import socket

    import uvicorn

    app = create_app(model, max_upload_bytes=20_000)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            threading.Event().wait(0.05)
        boundary = "entrepboundary"
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall((f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent, reply = 0, b""
        chunk = b"\0" * 1000
        for _ in range(2000):  # up to 2 MB if nobody stops us
            if select.select([sock], [], [], 0.005)[0]:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
                if b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}"):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"limit" in reply
        assert sent < 1_000_000, f"server kept reading ({sent} bytes sent before the 413)"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_upload_under_limit_still_works(small_limit_client):
    small = png_bytes((32, 32))
    assert small_limit_client.post("/api/classify", files=upload("ok.png", small)).status_code == 200


def test_bad_content_length_is_400(small_limit_client):
    r = small_limit_client.post("/api/classify", content=b"x", headers={"Content-Length": "lots"})
    assert r.status_code == 400


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------


def _check_results(res, k, gallery_ids):
    results = res["results"]
    assert 0 < len(results) <= k
    scores = [h["score"] for h in results]
    if res.get("order") == "side-diversified":  # best hit first, the other side's best second, then by score
        assert scores[0] == max(scores) and scores[2:] == sorted(scores[2:], reverse=True)
    else:
        assert scores == sorted(scores, reverse=True)
    for h in results:
        assert h["id"] in gallery_ids
        assert h["thumb"] == f"/api/gallery/{h['id']}/thumb"
    return results


def test_text_search_returns_ranked_gallery_images(client, model):
    r = client.get("/api/search", params={"q": "a spur on the septum", "k": 5})
    assert r.status_code == 200, r.text
    res = r.json()
    results = _check_results(res, 5, set(model.gallery.ids.tolist()))
    names = {it.id: it.name for it in model.gallery.items}
    assert all(h["name"] == names[h["id"]] for h in results)
    thumb = client.get(results[0]["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_text_search_class_group_and_auto_filters(client, model):
    ids = set(model.gallery.ids.tolist())
    res = client.get("/api/search", params={"q": "mucosa", "k": 50, "filter": "ear-left"}).json()
    assert {h["label"] for h in _check_results(res, 50, ids)} == {"ear-left"}
    res = client.get("/api/search", params={"q": "mucosa", "k": 50, "filter": "vc"}).json()
    assert {h["label"] for h in _check_results(res, 50, ids)} <= {"vc-open", "vc-closed"}
    res = client.get("/api/search", params={"q": "wax in the left ear", "k": 50, "filter": "auto"}).json()
    assert res["classes"] == ["ear-left"]
    assert {h["label"] for h in _check_results(res, 50, ids)} == {"ear-left"}


def test_image_search_is_class_aware_by_default(client, model, sample):
    name, data, _ = sample
    r = client.post("/api/search", files=upload(name, data), data={"k": "3"})
    assert r.status_code == 200, r.text
    res = r.json()
    pred = res["prediction"]
    assert pred["label"] in ENT.classes and pred["source"] in ("prototype", "head")
    assert pred["group"] == ENT.group_of(pred["label"])
    assert res["filter"] == model.config.retrieval.filter
    assert res["ranking"] == model.config.retrieval.ranking
    results = _check_results(res, 3, set(model.gallery.ids.tolist()))
    assert len(results) == 3
    ranked = [h["rank_score"] for h in results]
    assert ranked == sorted(ranked, reverse=True)
    if res["ranking"] == "soft":  # cosine + alpha * p(class of the hit)
        assert res["alpha"] == model.rank_alpha(res["filter"])
        assert all(h["rank_score"] >= h["score"] - 1e-6 for h in results)
    elif res["filter"] == "fine":
        assert {h["label"] for h in results} == {pred["label"]}


def test_image_search_with_a_named_class_stays_a_hard_filter(client, sample):
    name, data, _ = sample
    res = client.post("/api/search", files=upload(name, data), data={"k": "50", "filter": "ear-left"}).json()
    assert res["ranking"] == "hard" and {h["label"] for h in res["results"]} == {"ear-left"}


def test_uploaded_gallery_image_is_not_its_own_neighbour(client, model, sample):
    name, data, _ = sample
    own = [it.id for it in model.gallery.items if Path(it.path).name == name]
    res = client.post("/api/search", files=upload(name, data), data={"k": "50", "filter": "none"}).json()
    assert res["results"] and not set(own) & {h["id"] for h in res["results"]}


def test_an_uploaded_jpeg_gets_the_vector_its_file_gets(client, model, sample, tmp_path):
    """Uploads decode as files do (a large JPEG at the encoder's reduced scale): same prediction, same hits."""
    name, data, _ = sample
    big = tmp_path / "big.jpg"
    Image.open(io.BytesIO(data)).convert("RGB").resize((1600, 1200), Image.Resampling.BICUBIC).save(big, quality=92)
    from_file = model.predict([big])[0]
    r = client.post("/api/classify", files=upload("big.jpg", big.read_bytes(), "image/jpeg"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["label"] == from_file["label"]
    assert got["probabilities"] == pytest.approx(from_file["probabilities"], abs=1e-6)
    res = client.post("/api/search", files=upload("big.jpg", big.read_bytes(), "image/jpeg"),
                      data={"k": "5", "filter": "none"}).json()
    ref = model.search_image(big, k=5, filter="none")
    assert [h["id"] for h in res["results"]] == [h["id"] for h in ref["results"]]
    assert [h["score"] for h in res["results"]] == pytest.approx([h["score"] for h in ref["results"]], abs=1e-6)


def test_image_search_k_and_filter_as_query_parameters(client, sample):
    name, data, _ = sample
    r = client.post("/api/search?k=4&filter=none", files=upload(name, data))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["filter"] == "none" and len(res["results"]) == 4
    r = client.post("/api/search?filter=coarse", files=upload(name, data), data={"k": "6"})
    res = r.json()
    group = ENT.group_of(res["prediction"]["label"])
    assert len(res["results"]) == min(6, len(res["results"])) and res["filter"] == "coarse"
    if res["ranking"] == "hard":
        assert {ENT.group_of(h["label"]) for h in res["results"]} == {group}
    else:  # soft: ranked by cosine + alpha * p(group of the hit)
        ranked = [h["rank_score"] for h in res["results"]]
        assert ranked == sorted(ranked, reverse=True)


@pytest.mark.parametrize("k", ["0", "-1", "1000", "abc"])
def test_bad_k_is_422(client, sample, k):
    assert client.get("/api/search", params={"q": "polyp", "k": k}).status_code == 422
    assert client.post("/api/search", files=upload("a.png", sample[1]), data={"k": k}).status_code == 422
    assert client.post(f"/api/search?k={k}", files=upload("a.png", sample[1])).status_code == 422


@pytest.mark.parametrize("params, words", [
    ({"q": "polyp", "filter": "kidney"}, "unknown filter"),
    ({"q": "   "}, "empty"),
    ({"q": ""}, "q"),
    ({"q": "polyp", "filter": "fine"}, "image query"),
    ({}, "q"),
])
def test_bad_text_queries_are_422(client, params, words):
    r = client.get("/api/search", params=params)
    assert r.status_code == 422
    assert words in json.dumps(r.json()["detail"]).lower()


def test_unknown_image_filter_is_422(client, sample):
    r = client.post("/api/search", files=upload("a.png", sample[1]), data={"filter": "kidney"})
    assert r.status_code == 422 and "unknown filter" in r.json()["detail"]
    r = client.post("/api/search", files=upload("a.png", sample[1]), data={"filter": "auto"})
    assert r.status_code == 422 and "text" in r.json()["detail"]


# ---------------------------------------------------------------------------
# thumbnails
# ---------------------------------------------------------------------------


def test_thumbnail_by_id_is_small_jpeg_with_cache_headers(client, gallery_items):
    it = gallery_items[1]
    r = client.get(f"/api/gallery/{it.id}/thumb")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert "max-age" in r.headers["cache-control"]
    im = Image.open(io.BytesIO(r.content))
    orig = Image.open(it.path)
    assert max(im.size) == min(256, max(orig.size))
    assert abs(im.size[0] / im.size[1] - orig.size[0] / orig.size[1]) < 0.05
    again = client.get(f"/api/gallery/{it.id}/thumb", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("bad, status", [("999999", 404), ("-1", 404), ("abc", 422), ("..%2F..%2Fetc%2Fpasswd", 404)])
def test_thumbnail_unknown_or_bad_id(client, bad, status):
    r = client.get(f"/api/gallery/{bad}/thumb")
    assert r.status_code == status
    assert "detail" in r.json()


def test_no_file_served_outside_gallery_and_static(client):
    for url in ("/static/../app.py", "/static/%2e%2e/app.py", "/api/gallery/1/../../../etc/passwd", "/report/../model.json"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"import" not in r.content and b"root:" not in r.content


# ---------------------------------------------------------------------------
# hidden names
# ---------------------------------------------------------------------------


def _all_responses(c, sample):
    name, data, _ = sample
    return [
        c.get("/healthz").text,
        c.get("/api/classes").text,
        c.post("/api/classify", files=upload("patient-0042.png", data)).text,
        c.post("/api/search", files=upload("patient-0042.png", data), data={"k": "50", "filter": "none"}).text,
        c.get("/api/search", params={"q": "a spur on the septum", "k": 50}).text,
        c.post("/api/classify", files=upload("patient-0042.png", b"garbage")).text,
    ]


def test_hide_names_leaks_no_file_names_or_paths(hidden_client, client, gallery_items, sample, tiny_model_dir):
    secrets = {it.name for it in gallery_items} | {Path(it.path).stem for it in gallery_items}
    secrets |= {"patient-0042", str(Path(gallery_items[0].path).parent), str(tiny_model_dir)}
    shown = "\n".join(_all_responses(client, sample))
    assert any(s in shown for s in secrets)  # names are visible without the option...
    hidden = "\n".join(_all_responses(hidden_client, sample))
    leaked = sorted(s for s in secrets if s in hidden)
    assert not leaked, leaked  # ...and nowhere with it
    res = hidden_client.get("/api/search", params={"q": "polyp", "k": 3}).json()["results"]
    assert res and all(set(h) == {"id", "score", "label", "group", "caption", "thumb"} for h in res)


# ---------------------------------------------------------------------------
# page, report, docs, hosts, concurrency
# ---------------------------------------------------------------------------


def test_page_and_assets_are_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="file-input"' in r.text and 'id="text-input"' in r.text and 'href="/report"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    static = Path(__file__).resolve().parents[1] / "src" / "entrep" / "server" / "static"
    for f in ("index.html", "app.js", "style.css"):
        body = client.get("/" if f == "index.html" else f"/static/{f}").text
        assert body == (static / f).read_text(encoding="utf-8")
        # nothing fetched from outside: the page must work on an air-gapped machine
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", body), f
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", body), f
        assert "@import" not in body


def test_report_is_served_when_present(client, tiny_model_dir):
    r = client.get("/report")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert r.content == (tiny_model_dir / "report" / "report.html").read_bytes()
    assert "script-src" not in r.headers["content-security-policy"]  # no script runs in the report


def test_report_missing_is_404(model, tmp_path):
    with TestClient(create_app(model, report_dir=tmp_path), base_url=BASE) as c:
        r = c.get("/report")
        assert r.status_code == 404 and "report" in r.json()["detail"]
        assert c.get("/healthz").json()["report"] is False


def test_docs_and_openapi_list_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    for path in ("/healthz", "/api/classify", "/api/search", "/api/gallery/{item_id}/thumb", "/api/classes", "/report"):
        assert path in spec["paths"]
    assert set(spec["paths"]["/api/search"]) == {"get", "post"}
    docs = client.get("/docs")
    assert docs.status_code == 200
    for path in spec["paths"]:
        assert path in docs.text
    assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", docs.text)


def test_foreign_host_header_is_refused(client):
    """A DNS-rebinding page on another site cannot read results through the loopback server."""
    r = client.get("/healthz", headers={"Host": "evil.example"})
    assert r.status_code == 400 and "Host" in r.json()["detail"]
    assert client.get("/healthz", headers={"Host": "evil.example:8000"}).status_code == 400
    assert client.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200


def test_concurrent_image_searches_agree_with_sequential(app, gallery_items):
    paths = [Path(it.path) for it in gallery_items[:8]]
    with TestClient(app, base_url=BASE) as c:
        want = [c.post("/api/search", files=upload(p.name, p.read_bytes()), data={"k": "5"}).json() for p in paths]
    got: list = [None] * len(paths)
    errors: list = []

    def worker(i):
        try:
            with TestClient(app, base_url=BASE) as c:
                r = c.post("/api/search", files=upload(paths[i].name, paths[i].read_bytes()), data={"k": "5"})
                assert r.status_code == 200, r.text
                got[i] = r.json()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for g, w in zip(got, want):
        assert g["prediction"]["label"] == w["prediction"]["label"]
        assert [h["id"] for h in g["results"]] == [h["id"] for h in w["results"]]
        assert [h["score"] for h in g["results"]] == pytest.approx([h["score"] for h in w["results"]], abs=1e-4)


def test_model_without_gallery_classifies_but_search_is_409(model, sample):
    import copy

    bare = copy.copy(model)
    bare.gallery = None
    with TestClient(create_app(bare), base_url=BASE) as c:
        assert c.get("/healthz").json()["gallery_size"] == 0
        assert c.post("/api/classify", files=upload("a.png", sample[1])).status_code == 200
        r = c.get("/api/search", params={"q": "polyp"})
        assert r.status_code == 409 and "entrep index" in r.json()["detail"]
        assert c.get("/api/gallery/0/thumb").status_code == 404


# ---------------------------------------------------------------------------
# the serve command
# ---------------------------------------------------------------------------


def test_serve_refuses_a_folder_that_is_not_a_model(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from entrep.cli import main; main()", "serve", "--model",
                        str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "error:" in r.stderr and "nope" in r.stderr
    assert "Traceback" not in r.stderr


def _invoke_serve(monkeypatch, args):
    import uvicorn
    from typer.testing import CliRunner

    from entrep.cli import app as cli_app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    result = CliRunner().invoke(cli_app, ["serve", *args])
    return result, calls


def test_serve_binds_loopback_by_default(monkeypatch, tiny_model_dir):
    result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--port", str(_free_port())])
    assert result.exit_code == 0, result.output
    (app, kw), = calls
    assert kw["host"] == "127.0.0.1"
    assert "WARNING" not in result.output
    assert app.state.entrep.max_upload_bytes == 20 * 1024 * 1024


def test_serve_warns_loudly_on_a_public_address(monkeypatch, tiny_model_dir):
    result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port",
                                                str(_free_port()), "--hide-names", "--max-upload-mb", "2"])
    assert result.exit_code == 0, result.output
    (app, kw), = calls
    assert kw["host"] == "0.0.0.0"
    assert "WARNING" in result.output and "0.0.0.0" in result.output
    assert app.state.entrep.hide_names is True
    assert app.state.entrep.max_upload_bytes == 2 * 1024 * 1024


def test_serve_host_policy_follows_the_bind_address_and_allow_host(monkeypatch, tiny_model_dir):
    result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--host", "127.0.0.2", "--port",
                                                str(_free_port()), "--allow-host", "ent-pc.local",
                                                "--max-concurrent", "3"])
    assert result.exit_code == 0, result.output
    (app, kw), = calls
    policy = app.state.host_policy
    assert policy.allows("127.0.0.2:8000") and policy.allows("ent-pc.local:8000") and policy.allows("localhost")
    assert not policy.allows("evil.example:8000")
    assert app.state.entrep.max_concurrent == 3


def test_serve_links_a_report_folder_given_with_report(monkeypatch, tiny_model_dir, tmp_path):
    (tmp_path / "report.html").write_text("<html><title>other report</title></html>", encoding="utf-8")
    result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--port", str(_free_port()),
                                                "--report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with TestClient(calls[0][0], base_url=BASE) as c:
        assert "other report" in c.get("/report").text
    result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--port", str(_free_port()),
                                                "--report", str(tmp_path / "missing")])
    assert not calls and "no report.html" in str(result.exception)


def test_serve_reports_a_busy_port(monkeypatch, tiny_model_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        result, calls = _invoke_serve(monkeypatch, ["--model", str(tiny_model_dir), "--port", str(port)])
    assert not calls
    assert "already in use" in str(result.exception)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
