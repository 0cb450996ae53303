"""`clipad run --serve HOST:PORT`: a small live viewer in the browser.

- ``/``: the page: the live overlay (MJPEG), the current score, and a score-over-time plot
  (the fused score once calibrated, the map maximum until then);
- ``/stream.mjpg``: the overlay frames as multipart/x-mixed-replace JPEG;
- ``/status.json``: frames, fps, the last record and the recent score history.

Standard library only (ThreadingHTTPServer); binds 127.0.0.1 unless told otherwise. Exposed to a
factory network for weeks, it lets no one in by accident:
- every connection has a socket timeout (idle or stalled clients are closed) and at most
  ``MAX_CLIENTS`` are served at once (more get 503);
- the Host header must name this server (an address it is bound to, or localhost for a loopback
  bind), which defeats DNS rebinding from a browser on another site;
- bound to anything but loopback, every request needs the access token printed once at start
  (``?token=...`` in the URL; the page then keeps it in a same-site cookie).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.records import FrameResult, Prediction

HISTORY = 600
MAX_CLIENTS = 32
CLIENT_TIMEOUT_S = 15.0  # a client that neither sends its request nor reads the stream for this long is closed
TOKEN_COOKIE = "clipad_token"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
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


class _Server(ThreadingHTTPServer):
    """A threading server that serves at most ``max_clients`` connections at once."""

    daemon_threads = True
    request_queue_size = (
        256  # listen backlog: a burst of clients is accepted (and answered 503 beyond the cap), not left in SYN retries
    )

    def __init__(self, address, handler, max_clients: int):
        self.slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>clipad live</title>
<style>body{font-family:sans-serif;margin:16px;background:#111;color:#eee}
#wrap{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
img{width:480px;max-width:100%;height:auto;border:1px solid #444}
canvas{background:#1b1b1b;border:1px solid #444}.big{font-size:28px}</style></head>
<body><h2>clipad live</h2><div id="wrap"><img id="live" src="/stream.mjpg" alt="live overlay">
<div><div class="big" id="score">waiting for frames...</div><div id="meta"></div>
<canvas id="plot" width="560" height="220"></canvas></div></div>
<script>
window.statusUpdates = 0; window.plotPoints = 0; window.lastFrame = -1;
function draw(hist, key) {
  const c = document.getElementById('plot'), g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const ys = hist.map(h => h[key]).filter(v => v !== null);
  if (ys.length < 2) return;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = (hi - lo) || 1;
  g.strokeStyle = '#4cf'; g.beginPath();
  ys.forEach((v, i) => { const x = i * c.width / (ys.length - 1), y = c.height - 8 - (v - lo) / span * (c.height - 16);
                         i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); window.plotPoints = ys.length;
}
async function poll() {
  try {
    const s = await (await fetch('/status.json', {cache: 'no-store'})).json();
    window.statusUpdates += 1;
    if (s.last) {
      window.lastFrame = s.frames;
      const key = s.calibrated ? 'score' : 'map_max';
      const v = s.last[key];
      document.getElementById('score').textContent = s.calibrated
        ? `score ${v.toFixed(3)} ${s.last.label}` : `map max ${v.toPrecision(3)} (uncalibrated)`;
      document.getElementById('meta').textContent =
        `${s.frames} frames, ${s.fps.toFixed(1)} fps, source ${s.last.source}`;
      draw(s.history, key);
    }
  } catch (e) {}
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""


class Viewer:
    """The shared state between the pipeline's writer thread and the HTTP handlers."""

    def __init__(
        self,
        host: str,
        port: int,
        calibrated: bool,
        max_clients: int = MAX_CLIENTS,
        timeout: float = CLIENT_TIMEOUT_S,
        token: str | None = None,
    ):
        """``token``: required on every request (None: a fresh one when bound to a non-loopback
        address, none on loopback)."""
        self.calibrated = calibrated
        self.token = token if token is not None else (None if is_loopback(host) else secrets.token_urlsafe(18))
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.frames = 0
        self.started = time.time()
        self.last: dict | None = None
        self.history: deque = deque(maxlen=HISTORY)
        self.closed = False
        viewer = self
        viewer_timeout = timeout

        class Handler(BaseHTTPRequestHandler):
            timeout = viewer_timeout  # socket timeout: idle and stalled clients are closed

            def log_message(self, *args):  # quiet: the runtime has its own status line
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                if not viewer.host_allowed(self.headers.get("Host", "")):
                    self.send_error(403, "unknown Host")
                    return
                given = parse_qs(url.query).get("token", [None])[0] or self._cookie(TOKEN_COOKIE)
                if viewer.token is not None and not (given and hmac.compare_digest(given, viewer.token)):
                    self.send_error(401, "this viewer needs the access token printed at start")
                    return
                if url.path in ("/", "/index.html"):
                    self._send(PAGE.encode(), "text/html; charset=utf-8", set_token=viewer.token is not None)
                elif url.path == "/status.json":
                    self._send(json.dumps(viewer.status(), allow_nan=False).encode(), "application/json")
                elif url.path == "/stream.mjpg":
                    self._stream()
                else:
                    self.send_error(404)

            def _cookie(self, name: str) -> str | None:
                for part in self.headers.get("Cookie", "").split(";"):
                    key, _, value = part.strip().partition("=")
                    if key == name:
                        return value
                return None

            def _send(self, body: bytes, ctype: str, set_token: bool = False):
                self.send_response(200)
                if set_token:
                    self.send_header("Set-Cookie", f"{TOKEN_COOKIE}={viewer.token}; HttpOnly; SameSite=Strict; Path=/")
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = -1
                try:
                    while not viewer.closed:

                        def moved_on(seen: int = seen) -> bool:  # this pass's seen, bound now
                            return viewer.seq != seen or viewer.closed

                        with viewer.cond:
                            viewer.cond.wait_for(moved_on, timeout=1.0)
                            jpeg, seen = viewer.jpeg, viewer.seq
                        if jpeg is None:
                            continue
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpeg)).encode()
                            + b"\r\n\r\n"
                            + jpeg
                            + b"\r\n"
                        )
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass

        try:
            self.server = _Server((host, port), Handler, max_clients)
        except OSError as err:
            raise ClipadError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
        self.host, self.port = host, self.server.server_address[1]
        self.address = f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer", daemon=True)
        self.thread.start()

    def host_allowed(self, header: str) -> bool:
        """On a loopback bind (no token), the Host header must be a loopback name with this port:
        a page on another site that rebinds its DNS name to 127.0.0.1 is refused. Elsewhere the
        token is the gate and any Host is accepted (machines reach the viewer by their own names)."""
        if self.token is not None:
            return True
        host, port = split_host(header)
        return (not port or port == str(self.port)) and is_loopback(host)

    def status(self) -> dict:
        with self.cond:
            elapsed = max(time.time() - self.started, 1e-9)
            return {
                "frames": self.frames,
                "fps": self.frames / elapsed,
                "calibrated": self.calibrated,
                "last": self.last,
                "history": list(self.history),
            }

    def publish(self, view: np.ndarray, pred: Prediction) -> None:
        ok, buf = cv2.imencode(".jpg", to_bgr(view), [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.cond:
            if ok:
                self.jpeg = buf.tobytes()
                self.seq += 1
            self.frames += 1
            self.last = pred.event()
            self.history.append({k: self.last[k] for k in ("time", "score", "map_max")})
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


class ServeSink:
    """Publishes every processed frame's overlay and record to the viewer."""

    def __init__(self, spec: str, calibrated: bool):
        host, _, port = spec.rpartition(":")
        if not port.isdigit():
            raise ClipadError(f"--serve takes HOST:PORT (e.g. 127.0.0.1:8080), got '{spec}'")
        self.viewer = Viewer(host or "127.0.0.1", int(port), calibrated)

    def write(self, result: FrameResult) -> None:
        self.viewer.publish(result.view if result.view is not None else result.image, result.record)

    def close(self) -> None:
        self.viewer.close()
