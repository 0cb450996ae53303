"""The Triton backend against a real tritonserver (the nvidia-pytriton wheel's binary, Python
backend running the exported tiny graph with onnxruntime).

Skipped only when nvidia-pytriton is not installed; with CLIPAD_REQUIRE_TRITON=1 (set in CI)
that is a failure instead. One server for the module; the load scenario (8 `clipad run`
clients, the server killed and restarted on the same ports mid-run) runs once and several
tests read its results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipad.core.errors import ClipadError

ROOT = Path(__file__).resolve().parents[1]
N_CLIENTS = 8
FRAMES = 600  # per client: clients start a few seconds apart; each must still be mid-run when the server goes away

try:
    from clipad.deploy.triton_server import find_install

    find_install()
    MISSING = None
except ClipadError as err:
    MISSING = str(err)
    if os.environ.get("CLIPAD_REQUIRE_TRITON") == "1":
        raise RuntimeError(f"CLIPAD_REQUIRE_TRITON=1 but {MISSING}") from None
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _export_with_repo(root: Path, tiny, category: str):
    """Tiny fp32 artifacts of ``category`` (max batch 4) in root/art and their Triton repository in root/repo."""
    from clipad.core.progress import Tasks
    from clipad.deploy.export import ExportConfig, export
    from clipad.model.prompts import PROMPT_SETS

    art = export(
        tiny,
        ExportConfig(
            category=category,
            out=root / "art",
            prompts=PROMPT_SETS["industrial"],
            precision="fp32",
            max_batch=4,
            triton_repo=root / "repo",
        ),
        Tasks(None),
    )
    return art, root / "repo"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    """Tiny fp32 artifacts (max batch 4) and their Triton repository."""
    return _export_with_repo(tmp_path_factory.mktemp("triton"), tiny, "washer")


@pytest.fixture(scope="module")
def server(exported):
    from clipad.deploy.triton_server import LocalTriton

    with LocalTriton(exported[1]) as srv:
        yield srv


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipad", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def test_repository_has_the_python_model_with_its_hash(exported):
    from clipad.deploy.triton_repo import validate_config

    art, repo = exported
    text = (repo / "washer_python" / "config.pbtxt").read_text()
    cfg = validate_config(text, art.manifest.onnx, art.manifest.max_batch)
    assert cfg.backend == "python" and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert cfg.parameters["clipad_sha256"].string_value == art.manifest.files["model.onnx"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert (repo / "washer_python" / "1" / "model.py").read_text().startswith('"""Triton Python-backend model')


@pytest.mark.parametrize("protocol,shm", [("grpc", False), ("http", False), ("grpc", True)])
def test_triton_outputs_match_onnxruntime(exported, server, protocol, shm):
    from clipad.deploy.parity import compare, parity_images
    from clipad.runtime.backends import open_backend
    from clipad.runtime.backends.triton_backend import TritonTarget

    art = exported[0]
    x = parity_images(art.geometry, 6)
    with open_backend(art, "onnxruntime", "fp32", "cpu") as ort:
        ref_map, ref_prob = ort(x)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with open_backend(art, "triton", None, "cpu", TritonTarget(url, shm=shm)) as be:
        assert be.describe().startswith("triton fp32 (washer_python at ")
        amap, prob = be(x)
    assert amap.shape == ref_map.shape and prob.shape == ref_prob.shape
    figures = compare((ref_map, ref_prob), (amap, prob), "onnxruntime fp32")
    assert figures.rel_l2 <= 1e-5
    assert np.max(np.abs(prob - ref_prob) / np.maximum(np.abs(ref_prob), 1e-12)) <= 1e-5


def _tampered(art, tmp_path: Path, **changes) -> Path:
    """A copy of the artifacts whose manifest has ``changes`` (the graph itself unchanged)."""
    from clipad.deploy.manifest import MANIFEST, Manifest

    dst = tmp_path / "tampered"
    shutil.copytree(art.root, dst)
    m = Manifest.read(dst / MANIFEST)
    m.replace(**changes).write(dst / MANIFEST)
    return dst


def test_wrong_model_mismatched_config_other_hash_and_no_server_are_one_line(exported, server, tmp_path):
    from clipad.deploy.triton_server import free_port

    art = exported[0]
    images = str(tmp_path / "imgs")
    _image_folder(Path(images), 2)
    cases = [
        (["--artifacts", str(art.root), "--url", server.grpc_url, "--triton-model", "nope"], "no ready model 'nope'"),
        (
            ["--artifacts", str(_tampered(art, tmp_path / "a", max_batch=2)), "--url", server.grpc_url],
            "max_batch_size 4 vs the manifest's 2",
        ),
        (
            [
                "--artifacts",
                str(_tampered(art, tmp_path / "b", files={**art.manifest.files, "model.onnx": "0" * 64})),
                "--url",
                server.http_url,
            ],
            "another export",
        ),
        (["--artifacts", str(art.root), "--url", f"grpc://127.0.0.1:{free_port()}"], "does not answer"),
        (["--artifacts", str(art.root), "--url", "tcp://127.0.0.1:1"], "--url must be"),
    ]
    for args, fragment in cases:
        proc = _cli("run", "--source", images, "--backend", "triton", *args, "--events", str(tmp_path / "ev.jsonl"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, args
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, proc.stderr)
    assert not (tmp_path / "ev.jsonl").exists() or not (tmp_path / "ev.jsonl").read_text()


def test_python_model_refuses_a_graph_whose_hash_differs(exported, tmp_path):
    from clipad.deploy.triton_server import LocalTriton

    repo = tmp_path / "repo"
    shutil.copytree(exported[1] / "washer_python", repo / "washer_python")
    cfg = repo / "washer_python" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(exported[0].manifest.files["model.onnx"], "f" * 64))
    with pytest.raises(ClipadError, match="has sha256 .* the manifest's is ffffffffffff"):
        with LocalTriton(repo, start_timeout_s=60):
            pass


def _image_folder(folder: Path, n: int) -> Path:
    """``n`` PNG frames (hard links of a few distinct synthetic images)."""
    import cv2

    from clipad.data.synth import sample_images

    folder.mkdir(parents=True, exist_ok=True)
    distinct = [folder.parent / f".{folder.name}-{i}.png" for i in range(4)]
    for path, img in zip(distinct, sample_images(4, seed=len(folder.name)), strict=False):
        cv2.imwrite(str(path), cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR))
    for i in range(n):
        os.link(distinct[i % 4], folder / f"{i:05d}.png")
    return folder


@dataclass
class Client:
    proc: subprocess.Popen
    events: Path
    stderr: str = ""

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines()] if self.events.exists() else []


def _run_client(artifacts: Path, folder: Path, events: Path, url: str, *extra: str) -> subprocess.Popen:
    """`clipad run --backend triton` on ``folder``, writing ``events`` (request timeout 5 s)."""
    return subprocess.Popen(
        [sys.executable, "-m", "clipad", "run", "--source", str(folder), "--artifacts", str(artifacts),
         "--backend", "triton", "--url", url, "--triton-timeout", "5", "--events", str(events),
         "--status-every", "999", *extra],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def load_run(exported, server, tmp_path_factory):
    """8 `clipad run --backend triton` clients, 4 requests in flight each (one frame per request),
    on 8 folders; as soon as every client has written a record, the server is killed (SIGKILL)
    and started again on the same ports. Returns the clients (finished), the restarted server's
    statistics once all clients are done, and the kill/restart times."""
    import tritonclient.http as http

    art = exported[0]
    root = tmp_path_factory.mktemp("load")
    clients = []
    for i in range(N_CLIENTS):
        folder = _image_folder(root / f"cam{i}", FRAMES)
        events = root / f"events{i}.jsonl"
        url = server.grpc_url if i % 2 == 0 else server.http_url
        proc = _run_client(art.root, folder, events, url, "--triton-inflight", "4")
        clients.append(Client(proc, events))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(c.records() for c in clients):
            assert all(c.proc.poll() is None for c in clients), "a client ended before the server was killed"
            time.sleep(0.05)
        assert all(c.proc.poll() is None for c in clients), "a client ended before the server was killed"
        killed = time.time()
        server.kill()
        time.sleep(2.0)  # down long enough for every client to notice
        server.start()
        restarted = time.time()
        for c in clients:
            _, c.stderr = c.proc.communicate(timeout=180)
        stats = http.InferenceServerClient(server.http_url[len("http://") :]).get_inference_statistics("washer_python")
    finally:
        for c in clients:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
    return clients, stats["model_stats"][0], killed, restarted


def test_every_frame_of_every_client_has_a_record(load_run):
    clients = load_run[0]
    for c in clients:
        assert c.proc.returncode == 0, c.stderr
        recs = c.records()
        assert [r["frame"] for r in recs] == list(range(FRAMES)), c.stderr  # none lost, none twice, in order
        assert all((r["label"] == "error") == (r["image_prob"] is None) for r in recs)


def test_server_batches_requests_of_several_clients(load_run):
    """Every request holds one frame (4 in flight per client, batches of at most 4), so an
    execution of more than one frame is a batch the server formed from several requests
    (statistics of the restarted server, which served most of the frames)."""
    stats = load_run[1]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    requests = int(stats["inference_stats"]["success"]["count"])
    assert max(sizes) > 1, sizes
    assert int(stats["execution_count"]) < requests, (stats["execution_count"], requests)


def test_restart_gap_is_in_the_events_and_counters_and_clients_reconnect(load_run):
    clients, _, killed, restarted = load_run
    for c in clients:
        recs = c.records()
        errors = [r for r in recs if r["label"] == "error"]
        assert errors, f"no error records for the outage: {c.stderr}"
        assert all("Triton server at" in r["error"] for r in errors)
        assert all(killed - 3 <= r["time"] for r in errors), "error records before the kill"
        last_error = max(r["frame"] for r in errors)
        after = [r for r in recs if r["frame"] > last_error]
        assert after and all(r["label"] != "error" for r in after), "the client did not score frames after the restart"
        summary = next(line for line in c.stderr.splitlines() if line.startswith("summary: "))
        assert f"{FRAMES} frames" in summary and f"errors {len(errors)}," in summary, summary
        assert "backend unavailable" in c.stderr


def test_calibrate_predict_and_bench_through_triton(exported, server, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported[0].root, art)
    good = _image_folder(tmp_path / "good", 12)
    proc = _cli(
        "calibrate",
        "--artifacts",
        str(art),
        "--good",
        str(good),
        "--backend",
        "triton",
        "--url",
        server.grpc_url,
        "--quiet",
    )
    assert proc.returncode == 0 and "calibrated on 12 good" in proc.stdout, proc.stderr
    proc = _cli(
        "predict",
        str(good),
        "--artifacts",
        str(art),
        "--backend",
        "triton",
        "--url",
        server.http_url,
        "--out",
        str(tmp_path / "pred"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and all(r["label"] in ("normal", "anomalous") for r in recs)
    proc = _cli(
        "bench",
        "--artifacts",
        str(art),
        "--backends",
        "triton",
        "--precision",
        "fp32",
        "--batch",
        "1",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--no-parity",
        "--url",
        server.grpc_url,
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "| triton fp32 (washer_python at grpc://" in proc.stdout, proc.stdout
    proc = _cli("parity", "--artifacts", str(art), "--backends", "triton", "--url", server.grpc_url)
    assert proc.returncode == 0 and "triton fp32 (washer_python" in proc.stdout, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def other_export(tmp_path_factory, tiny):
    """Another category's tiny export and its Triton repository: another graph, another hash."""
    return _export_with_repo(tmp_path_factory.mktemp("triton-other"), tiny, "bolt")


def _serve_as(repo: Path, model_dir: Path, name: str) -> None:
    """Put ``model_dir`` (a Triton model folder of clipad's) into ``repo`` under the model name ``name``."""
    shutil.rmtree(repo / name, ignore_errors=True)
    shutil.copytree(model_dir, repo / name)
    cfg = repo / name / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(f'name: "{model_dir.name}"', f'name: "{name}"'))


def test_a_server_restarted_with_another_export_stops_the_client_in_one_line(exported, other_export, tmp_path):
    """The same model name after the restart, but another export's graph: the client checks the
    server again after reconnecting and stops, since its calibration belongs to another model."""
    from clipad.deploy.triton_server import LocalTriton

    art, other = exported[0], other_export[0]
    assert other.manifest.files["model.onnx"] != art.manifest.files["model.onnx"]
    repo = tmp_path / "repo"
    repo.mkdir()
    _serve_as(repo, exported[1] / "washer_python", "washer_python")
    folder = _image_folder(tmp_path / "cam", 3000)
    events = tmp_path / "ev.jsonl"
    with LocalTriton(repo) as srv:
        proc = _run_client(art.root, folder, events, srv.grpc_url)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not Client(proc, events).records():
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.05)
            srv.kill()
            _serve_as(repo, other_export[1] / "bolt_python", "washer_python")
            srv.start()
            restarted = time.time()
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = err.strip().splitlines()
    assert proc.returncode == 1, err
    assert lines[-1].startswith("error: ") and "another export" in lines[-1], err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    recs = Client(proc, events).records()
    assert len(recs) < 3000, "every frame was scored"
    assert all(r["label"] == "error" for r in recs if r["time"] >= restarted), "frames scored by the other export"


SERVE_TRITON = r"""
import json, sys
import numpy as np
from clipad.deploy.artifacts import load_artifacts
from clipad.runtime.backends import select_backend
from clipad.runtime.backends.triton_backend import TritonTarget
art = load_artifacts(sys.argv[1])
with select_backend(art, "triton", "cpu", "auto", TritonTarget(sys.argv[2])) as be:
    amap, prob = be(np.zeros((2, art.manifest.image_size, art.manifest.image_size, 3), np.uint8))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision"))
print(json.dumps({"shape": list(amap.shape), "heavy": heavy}))
"""


def test_the_triton_client_does_not_import_torch(exported, server):
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_TRITON, str(exported[0].root), server.grpc_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["shape"] == [2, exported[0].manifest.image_size, exported[0].manifest.image_size] and res["heavy"] == []


def test_triton_server_command_serves_until_sigterm(exported, tmp_path):
    import signal

    from clipad.deploy.triton_server import free_port

    repo = tmp_path / "repo"  # a copy: no other server's stub names it
    shutil.copytree(exported[1], repo)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipad", "triton-server", "--repo", str(repo), "--grpc-port", str(port)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert line.startswith(f"tritonserver ready: grpc://127.0.0.1:{port} ") and "models washer_python" in line, line
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_stub_of(p, repo)]


def _is_stub_of(proc_dir: Path, repo: Path) -> bool:
    try:
        return str(repo).encode() in (proc_dir / "cmdline").read_bytes()
    except OSError:
        return False


def test_anomalydino_repository_is_served_with_onnxruntime_outputs(exported, server, synth_root, tmp_path):
    """`clipad export --method anomalydino --triton-repo` into the running server's repository:
    its Python model, loaded there (explicit model control), answers as ONNX Runtime does on the
    same images. DINOv2 ViT-S/14, seeded random weights, 56 px (a non-square 56 x 70 input), FP32."""
    import tritonclient.http as http

    from clipad import cli
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.parity import compare, parity_images
    from clipad.runtime.backends import open_backend
    from clipad.runtime.backends.triton_backend import TritonTarget

    repo, out = exported[1], tmp_path / "fabric"
    good = synth_root / "fabric" / "train" / "good"
    args = ["export", "--method", "anomalydino", "--category", "fabric", "--reference", str(good), "--out", str(out)]
    extra = ["--resolution", "56", "--random-weights", "--precision", "fp32", "--max-batch", "4", "--quiet"]
    assert cli.run([*args, *extra, "--triton-repo", str(repo)]) == 0
    art = load_artifacts(out)
    client = http.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        client.load_model("fabric_python")
        x = parity_images(art.geometry, 6)
        with open_backend(art, "onnxruntime", "fp32", "cpu") as ort:
            want = ort(x)
        with open_backend(art, "triton", None, "cpu", TritonTarget(server.http_url)) as be:
            assert be.describe().startswith("triton fp32 (fabric_python at ")
            got = be(x)
    finally:
        client.unload_model("fabric_python")
        client.close()
        for name in ("fabric_onnx", "fabric_python"):  # the module's other tests serve washer alone
            shutil.rmtree(repo / name)
    assert got[0].shape == want[0].shape == (6, 56, 70) and got[1].shape == want[1].shape == (6,)
    assert compare(want, got, "onnxruntime fp32").rel_l2 <= 1e-5
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)
