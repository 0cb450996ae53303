"""Triton against the in-process ONNX Runtime backend on this machine: overhead at batch 1 and the
aggregate throughput of several clients; writes a markdown report.

    python scripts/triton_load.py --artifacts art --repo repo --out triton_load.md

``--artifacts``/``--repo`` come from `clipad export --triton-repo` (ViT-B-16-plus-240 with
``--random-weights`` for the figures in docs/benchmarks.md: inference dominates there). The
script starts a local tritonserver (``clipad.deploy.triton_server``, the nvidia-pytriton wheel)
on the repository's ``<category>_python`` model and measures, one after the other:

1. latency at batch 1: in-process onnxruntime, then the Triton backend over gRPC, HTTP and each
   with system shared memory (one client, one request in flight): the difference is Triton's
   overhead on loopback;
2. throughput at ``--batch``: the in-process backend alone, then 1, 2, 4, 8 client processes,
   each sending ``--calls`` requests of ``--batch`` frames over gRPC; aggregate frames/s over the
   wall time from the first request to the last answer, and where the CPU time went (the
   server's process tree, the clients, the machine's load average).

Server and clients share this machine's CPU: on a small CPU the clients' work (decode, copies,
protocol) is taken from the server's inference, which a separate GPU server would not see.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children (the Python backend's stubs)."""
    pids, total = {pid}, 0.0
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    grew = True
    while grew:
        new = {p for p, (ppid, _) in stats.items() if ppid in pids} - pids
        grew = bool(new)
        pids |= new
    for p in pids:
        total += stats.get(p, (0, 0))[1] / CLK
    return total


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def time_calls(backend, x: np.ndarray, calls: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        backend(x)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        backend(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def worker(args) -> None:
    """One client process: wait for the start time, send the requests, print a JSON line."""
    from clipad.deploy.artifacts import load_artifacts
    from clipad.runtime.backends import open_backend
    from clipad.runtime.backends.triton_backend import TritonTarget

    art = load_artifacts(args.artifacts)
    x = images(args.batch, art.manifest.image_size, seed=args.seed)
    with open_backend(art, "triton", None, "cpu", TritonTarget(args.url, inflight=1, timeout_s=600)) as be:
        be(x)  # connected and warm
        time.sleep(max(0.0, args.start_at - time.time()))
        c0, t0 = time.process_time(), time.time()
        for _ in range(args.calls):
            be(x)
        t1 = time.time()
    print(json.dumps({"start": t0, "end": t1, "frames": args.calls * args.batch, "cpu_s": time.process_time() - c0}))


def run_clients(n: int, args, url: str, server_pid: int) -> dict:
    start_at = time.time() + 8 + n  # every client connected and warm before the common start
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--artifacts",
                str(args.artifacts),
                "--url",
                url,
                "--batch",
                str(args.batch),
                "--calls",
                str(args.calls),
                "--start-at",
                str(start_at),
                "--seed",
                str(i),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(n)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, load0 = tree_cpu_s(server_pid), os.getloadavg()[0]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"client failed with code {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "clients": n,
        "frames": sum(r["frames"] for r in results),
        "wall_s": wall,
        "fps": sum(r["frames"] for r in results) / wall,
        "server_cpu_s": tree_cpu_s(server_pid) - cpu0,
        "clients_cpu_s": sum(r["cpu_s"] for r in results),
        "load": (load0, os.getloadavg()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--repo", type=Path)
    ap.add_argument("--out", type=Path, default=Path("triton_load.md"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=3, help="requests per client (throughput)")
    ap.add_argument("--latency-calls", type=int, default=10, help="timed calls per row at batch 1")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.triton_server import LocalTriton
    from clipad.runtime.backends import open_backend
    from clipad.runtime.backends.triton_backend import TritonTarget
    from clipad.runtime.bench.machine import machine_info

    art = load_artifacts(args.artifacts)
    lines = [f"# Triton load ({art.manifest.model}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    try:
        lines += [f"machine: {json.dumps(machine_info())}", ""]
    except Exception as err:  # noqa: BLE001 - the figures matter more than the description
        lines += [f"machine: unknown ({err})", ""]
    x1 = images(1, art.manifest.image_size)
    xb = images(args.batch, art.manifest.image_size)
    rows = []
    with open_backend(art, "onnxruntime", "fp32", "cpu") as ort:
        load = os.getloadavg()[0]
        lat = time_calls(ort, x1, args.latency_calls)
        rows.append(("in-process onnxruntime", np.median(lat), np.percentile(lat, 99), load))
        c0 = time.process_time()
        ort(xb)
        thr = time_calls(ort, xb, args.calls, warmup=0)
        base_fps = args.batch * len(thr) / (sum(thr) / 1000)
        base_cpu = time.process_time() - c0
        base_load = os.getloadavg()[0]
    with LocalTriton(args.repo or args.artifacts.parent / "repo") as server:
        for proto, shm in (("grpc", False), ("http", False), ("grpc", True), ("http", True)):
            url = server.grpc_url if proto == "grpc" else server.http_url
            with open_backend(art, "triton", None, "cpu", TritonTarget(url, inflight=1, shm=shm, timeout_s=600)) as be:
                load = os.getloadavg()[0]
                lat = time_calls(be, x1, args.latency_calls)
                rows.append(
                    (f"triton {proto}{' + shared memory' if shm else ''}", np.median(lat), np.percentile(lat, 99), load)
                )
        scale = [run_clients(int(n), args, server.grpc_url, server.proc.pid) for n in args.clients.split(",")]
    ort_p50 = rows[0][1]
    lines += [
        "## Latency at batch 1 (one client, one request in flight)",
        "",
        "| path | p50 ms | p99 ms | overhead over in-process p50, ms | load avg (1 min) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {p50:.1f} | {p99:.1f} | {p50 - ort_p50:+.1f} | {load:.2f} |" for name, p50, p99, load in rows
    ]
    lines += [
        "",
        f"## Aggregate throughput at batch {args.batch} ({args.calls} requests per client, gRPC)",
        "",
        f"In-process onnxruntime: {base_fps:.2f} frames/s ({base_cpu:.1f} CPU s, load {base_load:.2f}).",
        "",
        "| clients | frames | wall s | frames/s | x in-process | server CPU s | clients CPU s | load avg start/end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['clients']} | {r['frames']} | {r['wall_s']:.1f} | {r['fps']:.2f} | {r['fps'] / base_fps:.2f} | "
        f"{r['server_cpu_s']:.1f} | {r['clients_cpu_s']:.1f} | {r['load'][0]:.2f}/{r['load'][1]:.2f} |"
        for r in scale
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
