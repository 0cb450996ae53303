"""`clipad run --serve HOST:PORT`: a small live viewer in the browser.

- ``/``: the page: the live overlay (MJPEG), the current score, and a score-over-time plot
  (the fused score once calibrated, the map maximum until then);
- ``/stream.mjpg``: the overlay frames as multipart/x-mixed-replace JPEG;
- ``/status.json``: frames, fps, the last record and the recent score history.

Standard library only (ThreadingHTTPServer); binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.records import Prediction

HISTORY = 600

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>clipad live</title>
<style>body{font-family:sans-serif;margin:16px;background:#111;color:#eee}
#wrap{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}img{width:480px;max-width:100%;height:auto;border:1px solid #444}
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
      document.getElementById('meta').textContent = `${s.frames} frames, ${s.fps.toFixed(1)} fps, source ${s.last.source}`;
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

    def __init__(self, host: str, port: int, calibrated: bool):
        self.calibrated = calibrated
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.frames = 0
        self.started = time.time()
        self.last: dict | None = None
        self.history: deque = deque(maxlen=HISTORY)
        self.closed = False
        viewer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the runtime has its own status line
                pass

            def do_GET(self):
                if self.path in ("/", "/index.html"):
                    self._send(PAGE.encode(), "text/html; charset=utf-8")
                elif self.path.startswith("/status.json"):
                    self._send(json.dumps(viewer.status(), allow_nan=False).encode(), "application/json")
                elif self.path.startswith("/stream.mjpg"):
                    self._stream()
                else:
                    self.send_error(404)

            def _send(self, body: bytes, ctype: str):
                self.send_response(200)
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
                        with viewer.cond:
                            viewer.cond.wait_for(lambda: viewer.seq != seen or viewer.closed, timeout=1.0)
                            jpeg, seen = viewer.jpeg, viewer.seq
                        if jpeg is None:
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise ClipadError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
        self.server.daemon_threads = True
        self.address = f"http://{host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer", daemon=True)
        self.thread.start()

    def status(self) -> dict:
        with self.cond:
            elapsed = max(time.time() - self.started, 1e-9)
            return {"frames": self.frames, "fps": self.frames / elapsed, "calibrated": self.calibrated,
                    "last": self.last, "history": list(self.history)}

    def publish(self, view: np.ndarray, pred: Prediction) -> None:
        ok, buf = cv2.imencode(".jpg", to_bgr(view), [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.cond:
            if ok:
                self.jpeg = buf.tobytes()
                self.seq += 1
            self.frames += 1
            self.last = pred.event()
            self.history.append({"time": pred.time, "score": pred.score, "map_max": pred.map_max})
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

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        self.viewer.publish(view if view is not None else frame, pred)

    def close(self) -> None:
        self.viewer.close()
