"""The live viewer under 200 simultaneous connections on loopback: idle sockets, slow MJPEG
readers and status pollers, while frames are published. Reports what kept working and the
thread count and RSS before, during and after (bounded loops; loopback only).

    python scripts/viewer_check.py [--connections 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time

import numpy as np

from clipad.core.memory import rss_mb
from clipad.runtime.records import Prediction
from clipad.runtime.server import Viewer


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed this connection (anything it sent, e.g. a 503, read first)."""
    s.settimeout(0.5)
    try:
        while True:
            if not s.recv(4096):
                return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    viewer = Viewer("127.0.0.1", 0, calibrated=False, timeout=5.0)
    stop = threading.Event()
    base_threads, base_rss = threading.active_count(), rss_mb()

    def publish() -> None:
        rng = np.random.default_rng(0)
        i = 0
        while not stop.is_set():
            view = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            viewer.publish(view, Prediction("cam", 0.5, float(rng.random()), frame=i, time=time.time()))
            i += 1
            time.sleep(0.03)

    threading.Thread(target=publish, daemon=True).start()
    n = args.connections
    idle = [socket.create_connection(("127.0.0.1", viewer.port), timeout=10) for _ in range(n // 2)]
    slow = []
    for _ in range(n // 4):  # MJPEG clients that read 1 KiB a second
        s = socket.create_connection(("127.0.0.1", viewer.port), timeout=10)
        s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        slow.append(s)
    polls = {"ok": 0, "503": 0, "other": 0}

    def poller() -> None:
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
                c.request("GET", "/status.json")
                r = c.getresponse()
                r.read()
                key = "ok" if r.status == 200 else "503" if r.status == 503 else "other"
                polls[key] += 1
                c.close()
            except OSError:
                polls["other"] += 1
            time.sleep(0.2)

    pollers = [threading.Thread(target=poller, daemon=True) for _ in range(n - len(idle) - len(slow))]
    for t in pollers:
        t.start()
    peak_threads, peak_rss = 0, 0.0
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        for s in slow:
            try:
                s.settimeout(0.001)
                s.recv(1024)
            except OSError:
                pass
        peak_threads = max(peak_threads, threading.active_count() - base_threads - len(pollers) - 1)
        peak_rss = max(peak_rss, rss_mb())
        time.sleep(1.0)
    idle_closed = sum(closed_by_server(s) for s in idle)
    c = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
    c.request("GET", "/status.json", headers={"Host": f"evil.example:{viewer.port}"})
    foreign = c.getresponse().status
    stop.set()
    for s in idle + slow:
        s.close()
    time.sleep(1.0)
    report = {
        "connections": n,
        "idle": len(idle),
        "slow_mjpeg": len(slow),
        "status_pollers": len(pollers),
        "seconds": args.seconds,
        "status_polls": polls,
        "idle_connections_closed (503 at the cap or the timeout)": idle_closed,
        "foreign_host_status": foreign,
        "viewer_threads_peak": peak_threads,
        "rss_mb": {"before": round(base_rss, 1), "peak": round(peak_rss, 1), "after": round(rss_mb(), 1)},
    }
    viewer.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
