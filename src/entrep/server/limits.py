"""ASGI middleware that keeps requests small and responses locked down.

:class:`BodyLimit` refuses an over-size request body with 413 *before* the
body is read: at once when ``Content-Length`` says so, and while streaming
otherwise (chunked uploads are counted as they arrive and cut off at the
limit). FastAPI would otherwise spool a whole multipart upload to memory/disk
before the endpoint could look at its size.

:class:`SecurityHeaders` adds headers that keep the page same-origin only:
no sniffing, no referrer, no framing, and a Content-Security-Policy per route
(the page loads nothing from outside, which also means it works air-gapped).

:class:`HostCheck` (DNS rebinding) and :class:`SameOrigin` (cross-site
uploads) keep other web sites' pages out.
"""

from __future__ import annotations

import json
from typing import Callable

from starlette.exceptions import HTTPException

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _json_response(status: int, detail: str):
    body = json.dumps({"detail": detail}).encode("utf-8")
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """Reject request bodies over ``max_body_bytes`` with 413 ``{"detail": ...}``."""

    def __init__(self, app, max_body_bytes: int, *, describe: Callable[[int], str]) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.describe = describe  # limit in bytes -> human message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                for msg in _json_response(400, "invalid Content-Length header"):
                    await send(msg)
                return
            if n > limit:  # refuse before reading a single body byte
                for msg in _json_response(413, self.describe(limit)):
                    await send(msg)
                return
        seen = 0

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    # Raised inside the endpoint's body parsing; FastAPI re-raises
                    # HTTPException untouched and turns it into a JSON 413.
                    raise HTTPException(status_code=413, detail=self.describe(limit))
            return msg

        await self.app(scope, counted_receive, send)


class HostCheck:
    """Answer only requests whose Host header the :class:`~entrep.server.hosts.HostPolicy` allows (JSON 400).

    A loopback server that answers any Host can be read by a web page on
    another site through DNS rebinding; checking Host closes that hole.
    """

    def __init__(self, app, policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not self.policy.allows(host):
            for msg in _json_response(400, "invalid Host header: this server answers only "
                                           f"{self.policy.describe()} (add a name with --allow-host)"):
                await send(msg)
            return
        await self.app(scope, receive, send)


_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def cross_site_reason(method: str, path: str, headers: dict[bytes, bytes]) -> str | None:
    """Why a request comes from another site's page (None when it is same-origin or a plain client).

    Browsers send ``Sec-Fetch-Site`` (and ``Origin`` on POST); curl and Python
    clients send neither and are served. A multipart upload needs no CORS
    preflight, so without this any page the user visits could POST images.
    Checked on every state-changing request and every ``/api/`` request.
    """
    if method not in _UNSAFE_METHODS and not path.startswith("/api/"):
        return None
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get(b"origin")
    if origin is None or method not in _UNSAFE_METHODS:
        return None
    origin_s = origin.decode("latin-1").strip().lower()
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if origin_s in (f"http://{host}", f"https://{host}"):
        return None
    return f"Origin {origin_s} is not this server ({host})"


class SameOrigin:
    """Refuse cross-site requests from browsers with 403 ``{"detail": ...}``."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = cross_site_reason(scope.get("method", "GET"), scope.get("path", ""), dict(scope.get("headers") or []))
        if reason is not None:
            for msg in _json_response(403, f"cross-site request refused ({reason}); use this server's own page "
                                           "or a command-line client"):
                await send(msg)
            return
        await self.app(scope, receive, send)


# The page and its assets: nothing from outside, no inline script.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The evaluation report is one self-contained file: inline CSS and data: images, no script at all.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class SecurityHeaders:
    """Add nosniff / no-referrer / CSP headers to every HTTP response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = REPORT_CSP if scope.get("path") == "/report" else PAGE_CSP

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers") or [])
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode())]
                headers += [(k, v) for k, v in extra if k not in names]
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, send_with_headers)
