"""ASGI middleware that keeps requests small and responses locked down.

:class:`BodyLimit` refuses an over-size request body with 413 *before* the
body is read: at once when ``Content-Length`` says so, and while streaming
otherwise (chunked uploads are counted as they arrive and cut off at the
limit). FastAPI would otherwise spool a whole multipart upload to memory/disk
before the endpoint could look at its size.

:class:`SecurityHeaders` adds headers that keep the page same-origin only:
no sniffing, no referrer, no framing, and a Content-Security-Policy per route
(the page loads nothing from outside, which also means it works air-gapped).
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
    """Answer only requests whose Host header names an allowed host (JSON 400 otherwise).

    A loopback server that answers any Host can be read by a web page on
    another site through DNS rebinding; checking Host closes that hole.
    """

    def __init__(self, app, allowed_hosts) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        if host not in self.allowed:
            for msg in _json_response(400, "invalid Host header: this server answers only "
                                           f"{', '.join(sorted(self.allowed))}"):
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
