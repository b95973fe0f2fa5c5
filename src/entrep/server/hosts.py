"""Which ``Host`` headers the server answers: an explicit policy derived from the bind address.

A web page on another site can reach a local server through DNS rebinding (its
own name made to resolve to 127.0.0.1 or a LAN address); the browser then sends
that name as ``Host``. The server answers only:

- the bind address itself (``127.0.0.2``, ``192.168.1.5``, ``::1``);
- the loopback names (``localhost``, ``127.0.0.1``, ``::1``) when it binds a
  loopback or wildcard address;
- any IP literal when it binds a wildcard address (``0.0.0.0``, ``::``): the
  machine's addresses are not known in advance, and an IP literal is never a
  rebinding name;
- every ``--allow-host NAME`` (e.g. the machine's DNS name on the LAN);
  ``--allow-host '*'`` switches the check off (not recommended).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower()


def _ip(host: str):
    try:
        return ipaddress.ip_address(_bare(host))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if _bare(host) == "localhost":
        return True
    ip = _ip(host)
    return bool(ip and ip.is_loopback)


def is_wildcard(host: str) -> bool:
    ip = _ip(host)
    return bool(ip and ip.is_unspecified)


def host_of(header: str) -> str:
    """The host part of a ``Host`` header value: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


@dataclass(frozen=True)
class HostPolicy:
    """Host names answered; ``any_ip`` also answers every IP literal; ``anything`` answers all."""

    names: frozenset[str]
    any_ip: bool = False
    anything: bool = False

    @classmethod
    def for_bind(cls, bind: str = "127.0.0.1", allow: tuple[str, ...] | list[str] = ()) -> "HostPolicy":
        allow = tuple(_bare(a) for a in allow if a.strip())
        names = {_bare(bind), *allow}
        wildcard = is_wildcard(bind)
        if wildcard or is_loopback(bind):
            names.update(LOOPBACK_NAMES)
        return cls(names=frozenset(names), any_ip=wildcard, anything="*" in allow)

    def allows(self, host_header: str) -> bool:
        if self.anything:
            return True
        host = host_of(host_header)
        if host in self.names:
            return True
        ip = _ip(host)
        if ip is None:
            return False
        return self.any_ip or str(ip) in self.names

    def describe(self) -> str:
        shown = sorted(self.names) + (["any IP address"] if self.any_ip else [])
        return ", ".join(shown)
