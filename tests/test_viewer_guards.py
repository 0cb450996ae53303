"""The live viewer lets no one in by accident and no one lock others out: Host check on loopback,
a token (and a per-viewer session cookie) elsewhere, a deadline for the whole request head, a cap
on connections waiting for theirs and on streams, no tracebacks for misbehaving clients.
Loopback only; bounded loops."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clipad.runtime.records import Prediction
from clipad.runtime.server import Viewer
from clipad.runtime.viewer_access import split_host
from clipad.runtime.viewer_gate import ViewerLimits


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
    v = Viewer(
        "127.0.0.1",
        0,
        calibrated=False,
        limits=ViewerLimits(streams=8, write_timeout_s=1.0, head_deadline_s=1.0, pending=16),
    )
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
        assert get(v.port, "/status.json?token=wrong")[0] == 403
        code, headers, _ = get(v.port, f"/?token={v.token}")
        session = headers["Set-Cookie"].split(";")[0]
        assert code == 200 and session.startswith(f"clipad_viewer_{v.port}=") and v.token not in session
        assert get(v.port, "/status.json", cookie=session)[0] == 200  # what the page sends
        assert get(v.port, "/status.json", host="any-name:1234", cookie=session)[0] == 200
        assert get(v.port, "/status.json", cookie=session + "x")[0] == 403
    finally:
        v.close()


def test_idle_connections_are_closed_and_the_caps_hold(viewer):
    """200 connections at once that send nothing: at most 16 wait for their request (the oldest are
    closed as new ones come), the rest are closed at the 1 s head deadline, the thread count stays
    bounded and the viewer keeps answering; streams are capped at 8 (503 beyond)."""
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", viewer.port), timeout=5) for _ in range(200)]
    time.sleep(0.3)
    assert threading.active_count() - before <= 16 + 2  # at most `pending` waiting handler threads
    assert get(viewer.port, "/status.json")[0] == 200  # a valid request gets in past 200 idle connections
    for s in idle[:184]:  # closed to let newer ones wait: no answer, just the end
        s.settimeout(5)
        assert s.recv(100) == b""
    time.sleep(1.2)
    for s in idle[184:]:  # closed at the deadline
        s.settimeout(5)
        assert s.recv(100) == b""
        s.close()
    streams = [http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10) for _ in range(9)]
    codes = []
    for c in streams:
        c.request("GET", "/stream.mjpg")
        codes.append(c.getresponse().status)
    assert codes == [200] * 8 + [503]
    for c in streams:
        c.close()


def test_slow_clients_without_the_token_do_not_lock_out_a_valid_one():
    """30 clients without the token each send a byte a second (more than the 8 stream slots),
    others send non-ASCII tokens and hang up early; a valid client polling /status.json every
    second is always answered within 2 s, and the server writes no traceback."""
    proc = subprocess.run(
        [sys.executable, "scripts/viewer_check.py", "--mode", "hostile", "--connections", "30", "--seconds", "8"]
        + ["--byte-every", "1", "--max-clients", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["valid_answers"] == {"200": report["valid_requests"]} and report["valid_requests"] >= 5, report
    assert report["valid_latency_s"]["max"] < 2.0, report
    assert report["tracebacks"] == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert report["malformed_requests"] > 0 and report["early_hang_ups"] > 0


def raw_request(port: int, request: bytes, hang_up: bool = False) -> bytes:
    """Send ``request`` bytes as they are; the status line of the answer (b"" when closed without
    one), or nothing at all when ``hang_up`` (the client resets the connection at once)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    if hang_up:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return b""
    answer = s.recv(64).split(b"\r\n")[0]
    s.close()
    return answer


def test_malformed_tokens_and_hang_ups_are_answered_without_tracebacks(capfd):
    v = Viewer("127.0.0.1", 0, calibrated=False, token="the-token")
    try:
        v.publish(np.zeros((16, 16, 3), np.uint8), Prediction("cam", 0.5, 0.1, frame=0, time=1.0))
        capfd.readouterr()
        head = b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for request in [
            b"GET /status.json?token=%C3%A9t%C3%A9" + head + b"\r\n",
            b"GET /status.json?token=\xe9\xff" + head + b"\r\n",
            b"GET /status.json" + head + f"Cookie: clipad_viewer_{v.port}=".encode() + b"\xc3\xa9; x=\xff\r\n\r\n",
        ]:
            assert raw_request(v.port, request).startswith(b"HTTP/1.0 403"), request
        for path in [b"/status.json?token=the-token", b"/stream.mjpg?token=the-token", b"/?token=%C3%A9"] * 5:
            raw_request(v.port, b"GET " + path + head + b"\r\n", hang_up=True)
        time.sleep(1.0)  # the server threads have met the resets
        assert get(v.port, "/status.json?token=the-token")[0] == 200
    finally:
        v.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]


def test_two_viewers_on_one_host_keep_their_own_sessions_and_the_token_stays_out_of_cookies():
    """A browser's cookies are per host, not per port (RFC 6265, 8.5): the cookie jar of urllib
    stands in for it. Logged in to two viewers on one host, each still lets the browser in."""
    import urllib.request
    from http.cookiejar import CookieJar

    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    viewers = [Viewer("127.0.0.1", 0, calibrated=False, token=f"token-{i}") for i in range(2)]
    try:
        for v in viewers:  # the page, opened with the printed URL, sets the cookie
            with browser.open(f"http://127.0.0.1:{v.port}/?token={v.token}", timeout=10) as resp:
                set_cookie = resp.headers["Set-Cookie"]
                assert all(a in set_cookie for a in ("HttpOnly", "SameSite=Strict", "Path=/")), set_cookie
        assert len(jar) == 2 and not any(c.value in ("token-0", "token-1") for c in jar)
        for v in viewers:  # what the page's poll sends: cookies only
            with browser.open(f"http://127.0.0.1:{v.port}/status.json", timeout=10) as resp:
                assert resp.status == 200
        cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
        assert get(viewers[0].port, "/status.json", cookie="clipad_token=token-0")[0] == 401  # the token is no cookie
        assert get(viewers[0].port, "/status.json", cookie=cookie)[0] == 200
    finally:
        for v in viewers:
            v.close()


def test_serve_takes_ipv6_and_any_case_of_localhost():
    from clipad.runtime.server import ServeSink

    sink = ServeSink("[::1]:0", calibrated=False)
    try:
        v = sink.viewer
        assert v.token is None and v.address == f"http://[::1]:{v.port}/"
        conn = http.client.HTTPConnection("::1", v.port, timeout=10)
        conn.request("GET", "/status.json")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        sink.close()
    sink = ServeSink("LOCALHOST:0", calibrated=False)
    try:
        assert sink.viewer.token is None  # loopback: no token, the Host check instead
        assert get(sink.viewer.port, "/status.json", host=f"LocalHost:{sink.viewer.port}")[0] == 200
    finally:
        sink.close()
