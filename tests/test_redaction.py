"""Credentials in stream URLs never reach what clipad shows or writes: errors, source names (records,
status lines, the viewer), snapshot file names; a Triton --url with credentials is refused.
Real sources: a local HTTP server serving a video, a refused port; the CLI in-process."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from clipad.runtime.records import FrameResult, Prediction
from clipad.runtime.sinks import SnapshotSink
from clipad.runtime.sources import LiveSource
from tests.helpers import assert_one_line_error, closed_port, run, write_video

SECRETS = ("s3cret", "p@ss", "hunter2")


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} in {text!r}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@10.1.2.3:554/stream1", "rtsp://***@10.1.2.3:554/stream1"),
        ("rtsp://admin:p@ss@10.1.2.3/s", "rtsp://***@10.1.2.3/s"),  # the last '@' ends the userinfo
        ("RTSP://Admin:s3cret@cam/s", "RTSP://***@cam/s"),
        ("rtsp://cam/s?user=admin&pwd=s3cret&channel=1", "rtsp://cam/s?user=***&pwd=***&channel=1"),
        ("http://cam/snap.cgi?USER=admin&Password=s3cret", "http://cam/snap.cgi?USER=***&Password=***"),
        ("http://cam/x?api_key=s3cret&token=hunter2#frag", "http://cam/x?api_key=***&token=***#frag"),
        ("http://user@cam/x.mjpg", "http://***@cam/x.mjpg"),
        ("/data/a@b.png", "/data/a@b.png"),
        ("cannot open stream rtsp://a:s3cret@h/x (timeout)", "cannot open stream rtsp://***@h/x (timeout)"),
        ("at grpc://a:s3cret@h:1, then http://h/?pwd=hunter2", "at grpc://***@h:1, then http://h/?pwd=***"),
    ],
)
def test_redaction_rules(url, shown):
    from clipad.core.redaction import redact

    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:p@ss@127.0.0.1:{port}/stream1", "rtsp://***@127.0.0.1:{port}/stream1"),
        ("rtsp://127.0.0.1:{port}/stream1?user=admin&pwd=s3cret", "rtsp://127.0.0.1:{port}/stream1?user=***&pwd=***"),
        ("RTSP://admin:s3cret@127.0.0.1:{port}/stream1", "RTSP://***@127.0.0.1:{port}/stream1"),
    ],
)
def test_credentials_never_reach_the_error_of_a_stream_that_does_not_open(art, tmp_path, capsys, url, shown):  # noqa: F811
    port = closed_port()  # nothing listens there: the stream is refused
    code, _, err = run(capsys, "run", "--source", url.format(port=port), "--artifacts", art.root)
    assert_one_line_error(code, err, "cannot open stream " + shown.format(port=port))
    assert_no_secret(err)


@pytest.fixture
def video_server(tmp_path):
    """A local HTTP server serving ``tmp_path`` (a video there plays as a network stream)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:p@ss@127.0.0.1:{port}/v.avi?user=admin&pwd=s3cret",
        "HTTP://admin:hunter2@127.0.0.1:{port}/v.avi",
    ],
)
def test_credentials_never_reach_records_events_or_snapshot_names(video_server, tmp_path, url):
    """A stream that opens: its frames, records and anomalous snapshots carry the redacted name."""
    write_video(tmp_path / "v.avi", 12)
    source = LiveSource(url.format(port=video_server))
    try:
        frame = source.read(timeout=10.0)
        assert frame is not None
    finally:
        source.close()
    assert_no_secret(source.name)
    assert_no_secret(frame.source)
    pred = Prediction(frame.source, 0.9, 1.0, label="anomalous", frame=frame.index, time=frame.time)
    assert_no_secret(str(pred.event()))
    sink = SnapshotSink(tmp_path / "snaps")
    sink.write(FrameResult(pred, frame.image, np.zeros((4, 4), np.float32), frame.image))
    names = [p.name for p in (tmp_path / "snaps").iterdir()]
    assert sink.written == 1 and names
    for name in names:
        assert_no_secret(name)


@pytest.mark.parametrize(
    "url", ["grpc://admin:s3cret@127.0.0.1:{port}", "HTTP://127.0.0.1:{port}?user=admin&password=s3cret"]
)
def test_a_triton_url_with_credentials_is_refused_in_one_line(art, tmp_path, capsys, url):  # noqa: F811
    """tritonclient sends no userinfo or query: credentials there would be silently unused."""
    write_video(tmp_path / "v.avi", 2)
    url = url.format(port=closed_port())
    code, _, err = run(
        capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", art.root, "--backend", "triton", "--url", url
    )
    assert_one_line_error(code, err, "--url", "credentials")
    assert_no_secret(err)
