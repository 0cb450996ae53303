"""The station's HTTP server: triggers, results, metrics and probes.

- ``POST /trigger``: a trigger payload (``trigger_payload``: part id, recipe, an image path inside
  ``paths.root`` or the image in base64; no image: the station captures one) -> 202
  ``{"job_id": ...}``; with ``?wait=1`` the answer waits for the result (up to the deadline and a
  second more, else ``WAIT_S``) and is 200 with the result record. A body that is not a trigger
  (malformed JSON, unknown fields, bad base64, a path outside the image root, too large) is still
  a trigger: it gets a job id and its ERROR result, answered 400 (413 when too large) ``{"job_id": ..., "error": why}``.
- ``GET /result/<job_id>``: 200 the result record; 202 while the job is pending; 404 unknown or
  forgotten.
- ``GET /metrics``: the Prometheus text format (``metrics.StationMetrics``).
- ``POST /mqtt/resend`` ``{"job_ids": [...]}``: the operator's path for a reconciliation (an
  MES log that lacks results the broker had acknowledged, e.g. before it was killed): the MQTT
  spool's kept records of these jobs are sent again -> 200 ``{"resent": [...], "not_kept": [...]}``;
  404 without ``--mqtt``, 400 for a body that is not such a list.
- ``GET /healthz``: 200 while the process serves; ``GET /readyz``: 200 when recipes are loaded,
  the station's threads alive and it is not halted, else 503 with the reasons.
- With the operator's page's views (``views.StationViews``): ``GET /`` the page (``page.PAGE``;
  opened with the token it starts a session cookie, as the viewer's page does), ``GET /api/state``
  its state (``page.PageState``), ``GET /score_plot.js`` its plot, ``GET /live/<camera index>.jpg``
  the latest overlay, ``GET /ng/<key>/thumb.jpg`` and ``/ng/<key>/full.jpg`` an NG part's overlay
  (404 once it has left the gallery). Without views these are 404.

Who may call it is the live viewer's rule (``clipad.runtime.viewer_access``): bound to loopback,
no token and the Host header must be a loopback name with this port; bound elsewhere, every
request needs the token printed at start, as ``?token=``, as ``Authorization: Bearer TOKEN``
(what Prometheus and probes send) or as the session cookie. Connections are gated like the
viewer's (``viewer_gate``): a deadline for the request head, a cap on waiting connections, no
tracebacks. The body of a trigger must arrive within ``BODY_DEADLINE_S``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from clipad.core.errors import ClipadError
from clipad.runtime.score_plot import SCORE_PLOT_JS
from clipad.runtime.station.metrics import CONTENT_TYPE, StationMetrics
from clipad.runtime.station.page import PAGE, page_state
from clipad.runtime.station.records import Trigger
from clipad.runtime.station.station import Station
from clipad.runtime.station.trigger_payload import ImagePaths, trigger_from_payload
from clipad.runtime.station.views import StationViews
from clipad.runtime.viewer_access import Access, Verdict, is_loopback, url_host
from clipad.runtime.viewer_gate import GatedHandler, GatedServer, ViewerLimits

if TYPE_CHECKING:
    from clipad.runtime.station.overhead import ChannelClock

MAX_BODY = 64 * 1024 * 1024  # bytes of a trigger's body (a base64 image of about 48 MB)
BODY_DEADLINE_S = 30.0  # the whole body must arrive within this (a slow client cannot hold a thread longer)
WAIT_S = 30.0  # the longest ?wait=1 answer without a deadline
LIVE_JPEG = re.compile(r"/live/(\d{1,4})\.jpg")
NG_JPEG = re.compile(r"/ng/(\d{1,18})/(thumb|full)\.jpg")


class StationServer:
    """The HTTP server of ``station`` on ``host``:``port`` (0: a free port), in its own thread.
    ``token``: required on every request (None: a fresh one when bound to a non-loopback address,
    none on loopback); ``metrics``: what /metrics shows (None: 404); ``views``: what the operator's
    page shows (None: no page); ``clock``: told when a ``?wait=1`` answer has been written;
    ``resend``: ``MqttPublisher.resend`` (None: no MQTT)."""

    def __init__(
        self,
        station: Station,
        host: str,
        port: int,
        metrics: StationMetrics | None = None,
        token: str | None = None,
        limits: ViewerLimits | None = None,
        views: StationViews | None = None,
        paths: ImagePaths | None = None,
        clock: ChannelClock | None = None,
        resend: Callable[[list[str]], list[str]] | None = None,
    ):
        self.station, self.metrics, self.views = station, metrics, views
        self.paths = paths or ImagePaths()
        self.clock, self.resend = clock, resend
        self.limits = limits or ViewerLimits()
        self.token = token if token is not None else (None if is_loopback(host) else secrets.token_urlsafe(18))
        try:
            self.server = GatedServer((host, port), _handler(self), self.limits)
        except OSError as err:
            raise ClipadError(f"cannot serve on {url_host(host)}:{port}: {err.strerror or err}") from None
        self.host, self.port = host, self.server.server_address[1]
        self.access = Access(self.token, self.port)
        self.address = f"http://{url_host(host)}:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="station-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(srv: StationServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``srv``: the head read within the gate's deadline, then the
    viewer's Host and token checks, then the answer."""
    station, timeout_s = srv.station, srv.limits.write_timeout_s

    class Handler(GatedHandler):
        timeout = timeout_s

        def _allowed(self) -> bool:
            if not srv.access.host_allowed(self.headers.get("Host", ""), srv.port):
                self.send_error(403, "unknown Host")
                return False
            query = parse_qs(urlsplit(self.path).query).get("token", [None])[0]
            scheme, _, bearer = self.headers.get("Authorization", "").partition(" ")
            given = query if query is not None else (bearer.strip() if scheme.lower() == "bearer" else None)
            verdict = srv.access.check(given, self._cookie(srv.access.cookie_name))
            if verdict is not Verdict.ALLOWED:
                self.send_error(verdict.value, "this station needs the access token printed at start")
                return False
            return True

        def do_GET(self):
            if not self._allowed():
                return
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._json(200, {"alive": True})
            elif path == "/readyz":
                problems = station.readiness()
                self._json(503 if problems else 200, {"ready": not problems, "state": station.state,
                                                      "problems": problems})  # fmt: skip
            elif path == "/metrics" and srv.metrics is not None:
                self._send(200, srv.metrics.render(), CONTENT_TYPE)
            elif srv.views is not None and self._page(path, srv.views):
                pass
            elif path.startswith("/result/"):
                job_id = unquote(path[len("/result/") :])
                result = station.result(job_id)
                if result is not None:
                    self._json(200, result.to_json())
                elif station.pending(job_id):
                    self._json(202, {"job_id": job_id, "pending": True})
                else:
                    self._json(404, {"job_id": job_id, "error": "unknown job (never submitted, or forgotten)"})
            else:
                self.send_error(404)

        def do_POST(self):
            if not self._allowed():
                return
            url = urlsplit(self.path)
            if url.path == "/mqtt/resend":
                self._resend()
                return
            if url.path != "/trigger":
                self.send_error(404)
                return
            body, status = self._body()
            if isinstance(body, str):  # the body could not be read: still a trigger, refused
                trigger = Trigger("http", refused=f"malformed trigger: {body}", received=self.received,
                                  received_wall=self.received_wall)  # fmt: skip
            else:
                trigger = trigger_from_payload(body, "http", srv.paths, max_bytes=MAX_BODY, received=self.received,
                                               received_wall=self.received_wall)  # fmt: skip
            job_id = station.submit(trigger)
            if trigger.refused is not None:
                self._json(status, {"job_id": job_id, "error": trigger.refused})
                return
            if parse_qs(url.query).get("wait", ["0"])[0] not in ("1", "true", "yes"):
                self._json(202, {"job_id": job_id})
                return
            deadline = station.config.deadline_ms
            result = station.wait(job_id, WAIT_S if deadline is None else deadline / 1000 + 1.0)
            if result is None:
                self._json(202, {"job_id": job_id})
                return
            self._json(200, result.to_json())
            if srv.clock is not None:
                srv.clock.sent("http", result)

        def _resend(self) -> None:
            """POST /mqtt/resend: the kept MQTT records of the listed job ids, sent again."""
            if srv.resend is None:
                self._json(404, {"error": "this station has no MQTT channel (--mqtt)"})
                return
            body, status = self._body()
            try:
                job_ids = json.loads(body)["job_ids"] if isinstance(body, bytes) else None
            except (ValueError, TypeError, KeyError):
                job_ids = None
            if not isinstance(job_ids, list) or not all(isinstance(j, str) for j in job_ids):
                why = body if isinstance(body, str) else 'the body must be {"job_ids": ["<job id>", ...]}'
                self._json(status, {"error": why})
                return
            resent = srv.resend(job_ids)
            self._json(200, {"resent": resent, "not_kept": sorted(set(job_ids) - set(resent))})

        def _page(self, path: str, views: StationViews) -> bool:
            """Answer a request of the operator's page; False when ``path`` is none of its."""
            if path in ("/", "/index.html"):
                session = srv.access.new_session() if srv.token is not None else None
                self._send(200, PAGE.encode(), "text/html; charset=utf-8", session)
            elif path == "/api/state":
                self._json(200, page_state(station, views).to_json())
            elif path == "/score_plot.js":
                self._send(200, SCORE_PLOT_JS.encode(), "text/javascript; charset=utf-8")
            elif (m := LIVE_JPEG.fullmatch(path) or NG_JPEG.fullmatch(path)) is not None:
                jpeg = views.live_jpeg(int(m[1])) if m.re is LIVE_JPEG else views.ng_jpeg(int(m[1]), m[2] == "full")
                self._send(200, jpeg, "image/jpeg") if jpeg is not None else self.send_error(404)
            else:
                return False
            return True

        def _body(self) -> tuple[bytes | str, int]:
            """(the request body, 400) or (why it cannot be read, the status to answer)."""
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                return "the request needs a Content-Length", 400
            n = int(length)
            if n > MAX_BODY:
                return f"the body of {n} bytes is over the limit of {MAX_BODY}", 413
            data = bytearray(self.rfile.read(n))
            end = time.monotonic() + BODY_DEADLINE_S
            while len(data) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return f"the body did not arrive within {BODY_DEADLINE_S:g} s", 400
                self.connection.settimeout(min(left, timeout_s))
                try:
                    chunk = self.connection.recv(min(1 << 16, n - len(data)))
                except OSError:
                    chunk = b""
                if not chunk:
                    return "the body ended early", 400
                data += chunk
            return bytes(data), 400

        def _cookie(self, name: str) -> str | None:
            for part in self.headers.get("Cookie", "").split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value
            return None

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str, session: str | None = None) -> None:
            self.send_response(status)
            if session is not None:
                self.send_header("Set-Cookie", srv.access.cookie(session))
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    return Handler
