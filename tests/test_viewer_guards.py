"""The live viewer lets no one in by accident: Host check on loopback, a token elsewhere, a cap
on concurrent clients and a timeout for idle ones. Loopback only; bounded loops."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import numpy as np
import pytest

from clipad.runtime.records import Prediction
from clipad.runtime.server import Viewer, split_host


def get(port: int, path: str, host: str | None = None, cookie: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host} if host is not None else {}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read() if path != "/stream.mjpg" or resp.status != 200 else resp.read(200)
    conn.close()
    return resp.status, dict(resp.getheaders()), body


@pytest.fixture
def viewer():
    v = Viewer("127.0.0.1", 0, calibrated=False, max_clients=8, timeout=1.0)
    v.publish(np.zeros((16, 16, 3), np.uint8), Prediction("cam", 0.5, float("nan"), frame=0, time=1.0))
    yield v
    v.close()


def test_split_host():
    assert split_host("127.0.0.1:8080") == ("127.0.0.1", "8080")
    assert split_host("[::1]:80") == ("::1", "80") and split_host("localhost") == ("localhost", "")


def test_loopback_viewer_refuses_a_foreign_host_header(viewer):
    assert get(viewer.port, "/status.json")[0] == 200
    assert get(viewer.port, "/status.json", host=f"localhost:{viewer.port}")[0] == 200
    assert get(viewer.port, "/status.json", host=f"evil.example:{viewer.port}")[0] == 403  # DNS rebinding
    assert get(viewer.port, "/status.json", host="127.0.0.1:1")[0] == 403


def test_status_json_is_strict_even_with_nan_values(viewer):
    import json

    code, _, body = get(viewer.port, "/status.json")
    status = json.loads(body, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))
    assert code == 200 and status["last"]["map_max"] is None and status["history"][-1]["map_max"] is None


def test_non_loopback_bind_needs_the_token():
    v = Viewer("0.0.0.0", 0, calibrated=False)
    try:
        assert v.token and f"?token={v.token}" in v.address
        assert get(v.port, "/status.json")[0] == 401
        assert get(v.port, "/status.json?token=wrong")[0] == 401
        code, headers, _ = get(v.port, f"/?token={v.token}")
        assert (
            code == 200 and f"clipad_token={v.token}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
        )
        assert get(v.port, "/status.json", cookie=f"clipad_token={v.token}")[0] == 200  # what the page sends
        assert get(v.port, "/status.json", host="any-name:1234", cookie=f"clipad_token={v.token}")[0] == 200
    finally:
        v.close()


def test_idle_connections_are_closed_and_the_cap_holds(viewer):
    """200 connections at once, most idle: the viewer keeps answering, serves at most 8 at a time
    (503 beyond), closes idle ones after its timeout, and its thread count stays bounded."""
    before = threading.active_count()
    idle = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", viewer.port), timeout=5)
        idle.append(s)
    time.sleep(0.3)
    assert threading.active_count() - before <= 8 + 2  # at most max_clients handler threads
    refused = 0
    for s in idle[8:20]:  # connections beyond the cap were answered 503 and closed
        s.settimeout(5)
        data = s.recv(100)
        refused += data.startswith(b"HTTP/1.1 503")
    assert refused == 12
    closed = 0
    for s in idle[:8]:  # the served ones sent no request: closed by the 1 s timeout
        s.settimeout(5)
        closed += s.recv(100) == b""
    assert closed == 8
    for s in idle:
        s.close()
    time.sleep(0.2)
    assert get(viewer.port, "/status.json")[0] == 200  # still serving
