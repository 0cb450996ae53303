"""`clipad run --serve HOST:PORT`: a small live viewer in the browser.

- ``/``: the page: the live overlay (MJPEG), the current score, and a score-over-time plot
  (``clipad.runtime.score_plot``: a fixed [0, 1] axis; the normalised score with its threshold
  line at 0.5 once calibrated, the model's image_prob, also in [0, 1], without a threshold until
  then);
- ``/score_plot.js``: the plot's script;
- ``/stream.mjpg``: the overlay frames as multipart/x-mixed-replace JPEG;
- ``/status.json``: frames, fps, the last record and the recent score history.

Standard library only (ThreadingHTTPServer); binds 127.0.0.1 unless told otherwise (IPv6 as
``[::1]:8080``). Exposed to a factory network for weeks, it lets no one in by accident and no one
lock others out: who may use it is ``clipad.runtime.viewer_access`` (the Host check on loopback,
the token and its session cookie elsewhere), what a connection may cost before and after that is
``clipad.runtime.viewer_gate`` (a deadline for the whole request head, a cap on connections
waiting for theirs, slots for authenticated streams only, no tracebacks for clients that
misbehave).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.records import FrameResult, Prediction
from clipad.runtime.score_plot import SCORE_PLOT_JS
from clipad.runtime.viewer_access import Access, Verdict, is_loopback, parse_serve, url_host
from clipad.runtime.viewer_gate import GatedHandler, GatedServer, ViewerLimits

HISTORY = 600
MAX_CLIENTS = ViewerLimits.streams


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>clipad live</title>
<style>body{font-family:sans-serif;margin:16px;background:#111;color:#eee}
#wrap{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
img{width:480px;max-width:100%;height:auto;border:1px solid #444}
#plot{width:560px;height:240px;background:#1b1b1b;border:1px solid #444}.big{font-size:28px}</style></head>
<body><h2>clipad live</h2><div id="wrap"><img id="live" src="/stream.mjpg" alt="live overlay">
<div><div class="big" id="score">waiting for frames...</div><div id="meta"></div>
<svg id="plot" width="560" height="240"></svg></div></div>
<script src="/score_plot.js"></script>
<script>
window.statusUpdates = 0; window.plotPoints = 0; window.lastFrame = -1; window.plotInfo = null;
async function poll() {
  try {
    const s = await (await fetch('/status.json', {cache: 'no-store'})).json();
    window.statusUpdates += 1;
    if (s.last) {
      window.lastFrame = s.frames;
      const l = s.last, num = v => v === null ? '-' : v.toFixed(3);
      const max = l.map_max === null ? '-' : l.map_max.toPrecision(3);
      document.getElementById('score').textContent = s.calibrated
        ? `score ${num(l.score)} ${l.label}` : `p ${num(l.image_prob)} map max ${max} (uncalibrated)`;
      document.getElementById('meta').textContent =
        `${s.frames} frames, ${s.fps.toFixed(1)} fps, source ${l.source}`;
      // calibrated: the normalised score (0.5 at the threshold); uncalibrated: image_prob, also in [0, 1]
      const key = s.calibrated ? 'score' : 'image_prob';
      const pts = s.history.map(h => ({t: h.time, v: h[key],
        ok: h.label === 'normal' ? true : h.label === 'anomalous' ? false : null}));
      window.plotInfo = clipadPlot(document.getElementById('plot'), pts, s.calibrated
        ? {threshold: 0.5, yLabel: 'score (normalised)'} : {threshold: null, yLabel: 'image_prob (uncalibrated)'});
      window.plotPoints = window.plotInfo.points;
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
        limits: ViewerLimits | None = None,
        token: str | None = None,
    ):
        """``host``: a name or address (IPv6 without brackets); ``token``: required on every request
        (None: a fresh one when bound to a non-loopback address, none on loopback)."""
        self.calibrated = calibrated
        self.limits = limits or ViewerLimits()
        self.token = token if token is not None else (None if is_loopback(host) else secrets.token_urlsafe(18))
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.frames = 0
        self.started = time.time()
        self.last: dict | None = None
        self.history: deque = deque(maxlen=HISTORY)
        self.closed = False
        try:
            self.server = GatedServer((host, port), _handler(self), self.limits)
        except OSError as err:
            raise ClipadError(f"cannot serve on {url_host(host)}:{port}: {err.strerror or err}") from None
        self.host, self.port = host, self.server.server_address[1]
        self.access = Access(self.token, self.port)
        self.address = f"http://{url_host(host)}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer", daemon=True)
        self.thread.start()

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
            self.history.append({k: self.last[k] for k in ("time", "score", "image_prob", "map_max", "label")})
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


def _handler(viewer: Viewer) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``viewer``: its head read within the gate's deadline, then the
    Host and token checks, then the answer (a stream only in one of the gate's slots)."""
    server_timeout = viewer.limits.write_timeout_s

    class Handler(GatedHandler):
        timeout = server_timeout  # a client that stops reading the stream or an answer is closed

        def do_GET(self):
            url = urlsplit(self.path)
            if not viewer.access.host_allowed(self.headers.get("Host", ""), viewer.port):
                self.send_error(403, "unknown Host")
                return
            query_token = parse_qs(url.query).get("token", [None])[0]
            verdict = viewer.access.check(query_token, self._cookie(viewer.access.cookie_name))
            if verdict is not Verdict.ALLOWED:
                self.send_error(verdict.value, "this viewer needs the access token printed at start")
                return
            if url.path in ("/", "/index.html"):
                session = viewer.access.new_session() if viewer.token is not None else None
                self._send(PAGE.encode(), "text/html; charset=utf-8", session)
            elif url.path == "/score_plot.js":
                self._send(SCORE_PLOT_JS.encode(), "text/javascript; charset=utf-8")
            elif url.path == "/status.json":
                self._send(json.dumps(viewer.status(), allow_nan=False).encode(), "application/json")
            elif url.path == "/stream.mjpg":
                if not self.server.stream_slots.acquire(blocking=False):
                    self.send_error(503, "too many streams")
                    return
                try:
                    self._stream()
                finally:
                    self.server.stream_slots.release()
            else:
                self.send_error(404)

        def _cookie(self, name: str) -> str | None:
            for part in self.headers.get("Cookie", "").split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value
            return None

        def _send(self, body: bytes, ctype: str, session: str | None = None):
            self.send_response(200)
            if session is not None:
                self.send_header("Set-Cookie", viewer.access.cookie(session))
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
            while not viewer.closed:

                def moved_on(seen: int = seen) -> bool:  # this pass's seen, bound now
                    return viewer.seq != seen or viewer.closed

                with viewer.cond:
                    viewer.cond.wait_for(moved_on, timeout=1.0)
                    jpeg, seen = viewer.jpeg, viewer.seq
                if jpeg is None:
                    continue
                # a client that hangs up or stalls ends here with an OSError, dropped quietly by the gate
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode()
                    + b"\r\n\r\n"
                    + jpeg
                    + b"\r\n"
                )

    return Handler


class ServeSink:
    """Publishes every processed frame's overlay and record to the viewer."""

    def __init__(self, spec: str, calibrated: bool):
        host, port = parse_serve(spec)
        self.viewer = Viewer(host, port, calibrated)

    def write(self, result: FrameResult) -> None:
        self.viewer.publish(result.view if result.view is not None else result.image, result.record)

    def close(self) -> None:
        self.viewer.close()
