"""The station's HTTP server with a real HTTP client (http.client) on the tiny model's export:
triggers by path and by base64 (answered at once, or waited for), results by job id, a malformed
body still answered with a job id and its ERROR result, /metrics in the Prometheus text format
(read back with prometheus_client's own parser), /healthz and /readyz, and the viewer's access
rules (Host check on loopback, the token elsewhere, and no job for a request that is refused)."""

from __future__ import annotations

import base64
import http.client
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipad.runtime.station.http import StationServer
from clipad.runtime.station.metrics import StationMetrics
from clipad.runtime.station.recipes import RecipeBook
from clipad.runtime.station.records import JobResult
from clipad.runtime.station.station import Station, StationConfig
from clipad.runtime.station.trigger_payload import ImagePaths
from tests.test_station_core import CPU, make_recipes, noise_png


def call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def post(port: int, obj, path: str = "/trigger", **kw) -> tuple[int, dict]:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    code, _, data = call(port, "POST", path, body, {"Content-Type": "application/json", **kw})
    return code, json.loads(data)


class Published:
    def __init__(self):
        self.results: list[JobResult] = []

    def publish(self, result: JobResult) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def root(art, tmp_path_factory):
    return make_recipes(art, tmp_path_factory.mktemp("recipes"))


@pytest.fixture
def served(root):
    """A station on recipes a and b with metrics, served on loopback: (server, station, published)."""
    book = RecipeBook.load([f"a={root / 'a'}", f"b={root / 'b'}"], options=CPU)
    metrics, published = StationMetrics(), Published()
    station = Station(book, [metrics, published], StationConfig(deadline_ms=5000))
    metrics.bind(station)
    server = StationServer(station, "127.0.0.1", 0, metrics, paths=ImagePaths(root))
    yield server, station, published
    server.close()
    station.close()
    book.close()


def result_of(port: int, job_id: str) -> dict:
    end = time.monotonic() + 30
    while True:
        code, _, body = call(port, "GET", f"/result/{job_id}")
        if code == 200:
            return json.loads(body)
        assert code == 202 and time.monotonic() < end, (code, body)
        time.sleep(0.01)


def test_triggers_results_metrics_and_probes_over_http(served, root):
    server, station, published = served
    port = server.port
    assert call(port, "GET", "/healthz")[0] == 200
    code, _, body = call(port, "GET", "/readyz")
    assert code == 200 and json.loads(body) == {"ready": True, "state": "ready", "problems": []}
    code, sent = post(port, {"part_id": "P-1", "image": str(root / "good" / "part01.png")})
    assert code == 202 and set(sent) == {"job_id"}
    first = result_of(port, sent["job_id"])
    assert first["job_id"] == sent["job_id"] and first["part_id"] == "P-1" and first["recipe"] == "a"
    assert first["verdict"] in ("OK", "NG") and first["via"] == "http" and first["late"] is False
    b64 = base64.b64encode(noise_png(5)).decode()
    code, waited = post(port, {"part_id": 7, "recipe": "b", "image_b64": b64}, path="/trigger?wait=1")
    assert code == 200 and waited["part_id"] == "7" and waited["recipe"] == "b" and waited["verdict"] in ("OK", "NG")
    assert waited["latency_ms"] >= waited["inference_ms"] > 0
    for bad, why in (
        (b"{not json", "not JSON"),
        ({"image": "x.png", "colour": 1}, "unknown field colour"),
        ({"image": "x.png", "image_b64": b64}, "not both"),
        ({"image_b64": "***"}, "image_b64 must be base64"),
        ([1, 2], "expected a JSON object"),
        ({"image": "/etc/passwd"}, "outside the station's image root"),
    ):
        code, answer = post(port, bad)
        assert code == 400 and why in answer["error"], answer
        r = result_of(port, answer["job_id"])  # a refused trigger is still a job with its one result
        assert r["verdict"] == "error" and r["why"].startswith("malformed trigger: ") and why in r["why"]
    code, answer = post(port, {"recipe": "zzz", "image_b64": b64}, path="/trigger?wait=1")
    assert code == 200 and answer["verdict"] == "error" and answer["why"] == "unknown recipe zzz"
    assert call(port, "GET", "/result/nobody-1")[0] == 404
    assert call(port, "GET", "/nothing")[0] == 404 and call(port, "POST", "/result/x", b"{}")[0] == 404

    code, headers, text = call(port, "GET", "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    assert samples[("clipad_station_jobs_total", (("recipe", "a"), ("verdict", "error")))] == 6
    assert samples[("clipad_station_jobs_total", (("recipe", "zzz"), ("verdict", "error")))] == 1
    judged = sum(
        samples.get(("clipad_station_jobs_total", (("recipe", r), ("verdict", v))), 0)
        for r in "ab"
        for v in ("OK", "NG")
    )
    assert judged == 2 and samples[("clipad_station_latency_seconds_count", (("via", "http"),))] == 9
    assert samples[("clipad_station_queue_depth", ())] == 0 and samples[("clipad_station_backend_up", ())] == 1
    assert (
        samples[("clipad_station_state", (("state", "ready"),))] == 1 and samples[("clipad_station_recipes", ())] == 2
    )
    assert samples[("clipad_station_timeouts_total", ())] == 0 and samples[("clipad_station_late_total", ())] == 0
    assert len(published.results) == 9 and len({r.job_id for r in published.results}) == 9

    station.close()
    code, _, body = call(port, "GET", "/readyz")
    assert code == 503 and json.loads(body)["problems"] == ["station halted"] and json.loads(body)["state"] == "halted"
    assert call(port, "GET", "/healthz")[0] == 200  # alive, not ready
    code, answer = post(port, {"image_b64": b64}, path="/trigger?wait=1")
    assert code == 200 and answer["why"] == "station halted"


def test_the_loopback_server_refuses_a_foreign_host_header(served):
    server, station, published = served
    assert call(server.port, "GET", "/healthz", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert call(server.port, "GET", "/healthz", headers={"Host": f"evil.example:{server.port}"})[0] == 403
    code, _, _ = call(server.port, "POST", "/trigger", b"{}", {"Host": "evil.example"})
    assert code == 403 and published.results == []  # refused before it was a trigger: no job


def test_a_non_loopback_bind_needs_the_token(root):
    book = RecipeBook.load([f"a={root / 'a'}"], options=CPU)
    published = Published()
    station = Station(book, [published])
    server = StationServer(station, "0.0.0.0", 0, StationMetrics())
    try:
        port, token = server.port, server.token
        assert token
        assert call(port, "GET", "/healthz")[0] == 401
        assert call(port, "GET", "/healthz?token=wrong")[0] == 403
        assert call(port, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 403
        assert call(port, "POST", "/trigger", b'{"image_b64": "AAAA"}')[0] == 401
        assert call(port, "GET", f"/healthz?token={token}")[0] == 200
        assert call(port, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})[0] == 200
        code, answer = post(port, {"image_b64": base64.b64encode(noise_png(1)).decode()},
                            path=f"/trigger?wait=1&token={token}")  # fmt: skip
        assert code == 200 and answer["verdict"] in ("OK", "NG")
        assert [r.job_id for r in published.results] == [answer["job_id"]]  # the refused requests made no jobs
    finally:
        server.close()
        station.close()
        book.close()
