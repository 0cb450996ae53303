"""Who may use the live viewer: the ``--serve`` address, the Host check and the access token
with its sessions.

- Bound to loopback (no token), the Host header must be a loopback name with the viewer's port,
  which defeats DNS rebinding from a page on another site.
- Bound elsewhere, a request needs the token printed at start (``?token=...``) or a session
  cookie. Opening the page with the token starts a session: a random id kept in this process,
  sent back as a cookie named after the viewer's port (``clipad_viewer_<port>``; cookies are not
  isolated by port, RFC 6265 section 8.5, so two viewers on one host must not share a name). The
  token itself never goes into a cookie, so other services on the host never see it.
- Tokens and session ids are compared as bytes (any text a client sends, ASCII or not, is
  simply wrong, never an error): no token at all is 401, a wrong one 403.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections import OrderedDict

from clipad.core.errors import ClipadError

MAX_SESSIONS = 256  # the oldest session is forgotten beyond this (its browser then needs the token URL again)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(header: str) -> tuple[str, str]:
    """A Host header -> (host, port or ""): ``127.0.0.1:8080``, ``localhost``, ``[::1]:8080``."""
    header = header.strip()
    if header.startswith("["):
        host, _, rest = header[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    host, sep, port = header.rpartition(":")
    return (host, port) if sep else (header, "")


def parse_serve(spec: str) -> tuple[str, int]:
    """A ``--serve`` value -> (host, port): ``127.0.0.1:8080``, ``[::1]:8080``, ``:8080`` (127.0.0.1)."""
    host, port = split_host(spec)
    if not port.isdigit() or int(port) > 65535 or (":" in host and not spec.startswith("[")):
        raise ClipadError(f"--serve takes HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), got '{spec}'")
    return host or "127.0.0.1", int(port)


def url_host(host: str) -> str:
    """``host`` as written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


class Verdict(enum.Enum):
    ALLOWED = 200
    NO_TOKEN = 401
    WRONG_TOKEN = 403


def _same(given: str, expected: bytes) -> bool:
    # surrogateescape: the query decoder may leave lone surrogates; they must compare unequal, not raise
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


class Access:
    """The token (None: none needed, on loopback) and the sessions opened with it."""

    def __init__(self, token: str | None, port: int):
        self.token = token
        self.cookie_name = f"clipad_viewer_{port}"
        self._lock = threading.Lock()
        # sha256 of each session id -> None, oldest first: a lookup by hash leaks nothing about an id
        self._sessions: OrderedDict[bytes, None] = OrderedDict()

    def check(self, query_token: str | None, session: str | None) -> Verdict:
        """A request with ``query_token`` (``?token=``) and ``session`` (this viewer's cookie)."""
        if self.token is None:
            return Verdict.ALLOWED
        if query_token is None and session is None:
            return Verdict.NO_TOKEN
        if query_token is not None and _same(query_token, self.token.encode()):
            return Verdict.ALLOWED
        if session is not None:
            key = hashlib.sha256(session.encode("utf-8", "surrogateescape")).digest()
            with self._lock:
                if key in self._sessions:
                    return Verdict.ALLOWED
        return Verdict.WRONG_TOKEN

    def new_session(self) -> str:
        """A fresh session id (for the cookie), remembered until ``MAX_SESSIONS`` newer ones exist."""
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[hashlib.sha256(sid.encode()).digest()] = None
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return sid

    def cookie(self, sid: str) -> str:
        return f"{self.cookie_name}={sid}; HttpOnly; SameSite=Strict; Path=/"

    def host_allowed(self, header: str, port: int) -> bool:
        """On a loopback bind (no token), the Host header must be a loopback name with this port:
        a page on another site that rebinds its DNS name to 127.0.0.1 is refused. Elsewhere the
        token is the gate and any Host is accepted (machines reach the viewer by their own names)."""
        if self.token is not None:
            return True
        host, given_port = split_host(header)
        return (not given_port or given_port == str(port)) and is_loopback(host)
