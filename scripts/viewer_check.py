"""The live viewer under hostile and heavy load on loopback (bounded loops; loopback only).

``--mode load``: 200 simultaneous connections (idle sockets, slow MJPEG readers and status
pollers) while frames are published; reports what kept working and the thread count and RSS
before, during and after.

``--mode hostile``: a viewer with an access token; ``--connections`` clients without the token
each send one byte of a request every ``--byte-every`` seconds (reconnecting when closed), others
send malformed tokens (non-ASCII in the query and the cookie) and hang up before the answer,
while one valid client asks for ``/status.json`` every second. Reports the valid client's
answers and latencies and the tracebacks the server wrote on stderr.

    python scripts/viewer_check.py [--mode load|hostile] [--connections 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import secrets
import socket
import struct
import sys
import threading
import time
from collections import Counter

import numpy as np

from clipad.core.memory import rss_mb
from clipad.runtime.records import Prediction
from clipad.runtime.server import MAX_CLIENTS, Viewer
from clipad.runtime.viewer_gate import ViewerLimits


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed this connection (anything it sent, e.g. a 503, read first)."""
    s.settimeout(0.5)
    try:
        while True:
            if not s.recv(4096):
                return True
    except OSError:
        return False


class StderrTee(io.TextIOBase):
    """sys.stderr that also keeps what was written (the server threads' tracebacks land here)."""

    def __init__(self, inner):
        self.inner, self.parts, self.lock = inner, [], threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.parts.append(text)
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    def text(self) -> str:
        with self.lock:
            return "".join(self.parts)


def hang_up(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a client that goes away abruptly."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def slow_clients(port: int, n: int, byte_every: float, stop: threading.Event, counts: dict) -> None:
    """``n`` connections without a token, each sending one byte of a stream request every
    ``byte_every`` seconds; a connection the server closes is opened again."""
    request = b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n" + b"X-Pad: a\r\n" * 400
    socks: list[socket.socket | None] = [None] * n
    sent = [0] * n
    while not stop.is_set():
        for i in range(n):
            try:
                if socks[i] is None:
                    socks[i], sent[i] = socket.create_connection(("127.0.0.1", port), timeout=5), 0
                    counts["connections"] += 1
                sock = socks[i]
                assert sock is not None
                sock.sendall(request[sent[i] : sent[i] + 1])
                sent[i] = (sent[i] + 1) % len(request)
            except OSError:
                if socks[i] is not None:
                    socks[i].close()  # type: ignore[union-attr]
                socks[i] = None
        stop.wait(byte_every)
    for sock in socks:
        if sock is not None:
            sock.close()


def malformed_clients(port: int, cookie: str, stop: threading.Event, counts: dict) -> None:
    """Non-ASCII tokens in the query and in a cookie, and clients that hang up before the answer."""
    requests = [
        b"GET /status.json?token=%C3%A9t%C3%A9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: "
        + cookie.encode()
        + b"=\xe9\xff; x=\xc3\xa9\r\n\r\n",
        b"GET /stream.mjpg?token=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    i = 0
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(requests[i % len(requests)])
            if i % 2:
                hang_up(s)  # gone before the answer
                counts["hung_up"] += 1
            else:
                counts["malformed_answers"][s.recv(12)[9:12].decode("latin-1") or "closed"] += 1
                s.close()
                counts["malformed"] += 1
        except OSError:
            counts["malformed_errors"] += 1
        i += 1
        stop.wait(0.1)


def hostile(args: argparse.Namespace) -> dict:
    token = secrets.token_urlsafe(18)
    viewer = Viewer("127.0.0.1", 0, calibrated=False, limits=ViewerLimits(streams=args.max_clients), token=token)
    viewer.publish(np.zeros((32, 32, 3), np.uint8), Prediction("cam", 0.5, 0.1, frame=0, time=time.time()))
    tee = StderrTee(sys.stderr)
    sys.stderr = tee
    stop = threading.Event()
    counts: dict = {"connections": 0, "hung_up": 0, "malformed": 0, "malformed_errors": 0}
    counts["malformed_answers"] = Counter()
    threads = [
        threading.Thread(target=slow_clients, args=(viewer.port, args.connections, args.byte_every, stop, counts)),
        threading.Thread(target=malformed_clients, args=(viewer.port, viewer.access.cookie_name, stop, counts)),
    ]
    for t in threads:
        t.start()
    time.sleep(min(2.0, args.seconds / 4))  # the slow clients are all connected before the valid client starts
    latencies: list[float] = []
    answers: dict[str, int] = {}
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        start = time.perf_counter()
        try:
            c = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
            c.request("GET", f"/status.json?token={token}")
            r = c.getresponse()
            r.read()
            c.close()
            key = str(r.status)
        except OSError as err:
            key = type(err).__name__
        latencies.append(time.perf_counter() - start)
        answers[key] = answers.get(key, 0) + 1
        time.sleep(max(0.0, 1.0 - latencies[-1]))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    viewer.close()
    time.sleep(0.5)
    sys.stderr = tee.inner
    log = tee.text()
    return {
        "mode": "hostile",
        "seconds": args.seconds,
        "slow_clients": args.connections,
        "max_clients": args.max_clients,
        "byte_every_s": args.byte_every,
        "slow_connections_opened": counts["connections"],
        "malformed_requests": counts["malformed"],
        "malformed_answers": dict(counts["malformed_answers"]),
        "early_hang_ups": counts["hung_up"],
        "valid_requests": len(latencies),
        "valid_answers": answers,
        "valid_latency_s": {"max": round(max(latencies), 3), "mean": round(sum(latencies) / len(latencies), 3)},
        "tracebacks": log.count("Traceback"),
        "stderr_lines": len(log.splitlines()),
    }


def load(args: argparse.Namespace) -> dict:
    viewer = Viewer("127.0.0.1", 0, calibrated=False, limits=ViewerLimits(write_timeout_s=5.0, head_deadline_s=5.0))
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
        "mode": "load",
        "connections": n,
        "idle": len(idle),
        "slow_mjpeg": len(slow),
        "status_pollers": len(pollers),
        "seconds": args.seconds,
        "status_polls": polls,
        "idle_connections_closed (head deadline or waiting cap)": idle_closed,
        "foreign_host_status": foreign,
        "viewer_threads_peak": peak_threads,
        "rss_mb": {"before": round(base_rss, 1), "peak": round(peak_rss, 1), "after": round(rss_mb(), 1)},
    }
    viewer.close()
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("load", "hostile"), default="load")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-clients", type=int, default=MAX_CLIENTS, help="the viewer's cap on streams")
    ap.add_argument("--byte-every", type=float, default=5.0, help="hostile: seconds between a slow client's bytes")
    args = ap.parse_args()
    report = hostile(args) if args.mode == "hostile" else load(args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
