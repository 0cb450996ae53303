"""Run the doctor's probes side by side, each in its own process, and render what they found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from clipad.core.errors import ClipadError
from clipad.runtime.doctor.facts import (
    CHECKS,
    ChromiumFacts,
    CpuFacts,
    CudaFacts,
    Facts,
    Findings,
    GenICamFacts,
    LibraryFacts,
    ProbeFailure,
    PythonFacts,
    StationFacts,
    TensorRTFacts,
    WeightsFacts,
    from_json,
    to_json,
)
from clipad.runtime.doctor.probes import MARKER, PROBES
from clipad.runtime.doctor.verdicts import Verdict, auto_choice, verdicts, warnings

PROBE_TIMEOUT_S = 60.0  # a probe that hangs (a driver call, a network share) is a finding after this


@dataclass(frozen=True)
class DoctorReport:
    findings: Findings
    verdicts: list[Verdict]
    warnings: list[str]
    seconds: float

    def verdict(self, check: str) -> Verdict:
        return next(v for v in self.verdicts if v.check == check)

    def describe(self, as_json: bool = False) -> str:
        """The report as `clipad doctor` prints it: text, or JSON for support tickets."""
        return json.dumps(report_json(self), indent=2) if as_json else render_text(self)

    def refuse_unmet(self, require: tuple[str, ...]) -> None:
        """One line naming every required check that cannot work here (``--require``)."""
        missing = unmet(self, require)
        if missing:
            raise ClipadError("; ".join(f"{v.check} cannot be used here: {v.detail}" for v in missing))


def _probe(name: str, deep: bool, timeout: float) -> Facts | ProbeFailure:
    """Run one probe in a child Python; its record, or why there is none."""
    cmd = [sys.executable, "-m", "clipad.runtime.doctor.probes", name, *(["--deep"] if deep else [])]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return ProbeFailure(name, f"no answer within {timeout:g} s")
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(MARKER)), None)
    if line is None:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = tail[-1].strip() if tail else "no output"
        return ProbeFailure(name, f"its process exited with {proc.returncode}: {why}"[:300])
    try:
        return from_json(name, json.loads(line[len(MARKER) :]))
    except (ValueError, TypeError) as err:
        return ProbeFailure(name, f"unreadable answer ({err})")


def run_doctor(deep: bool = False, require: tuple[str, ...] = (), timeout: float = PROBE_TIMEOUT_S) -> DoctorReport:
    """Every probe, side by side. torch is imported only with ``deep`` or when it is required."""
    unknown = [r for r in require if r not in CHECKS]
    if unknown:
        raise ClipadError(f"--require takes {', '.join(CHECKS)}; got {', '.join(unknown)}")
    t0 = time.perf_counter()
    names = list(PROBES)
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {n: pool.submit(_probe, n, deep or (n == "torch" and "torch" in require), timeout) for n in names}
        findings = Findings.of({n: f.result() for n, f in futures.items()})
    return DoctorReport(findings, verdicts(findings), warnings(findings), time.perf_counter() - t0)


def report_json(report: DoctorReport) -> dict[str, Any]:
    """The report for support tickets: every probe's record, the verdicts and the warnings."""
    from clipad import __version__

    return {
        "clipad": __version__,
        "seconds": round(report.seconds, 2),
        "auto": auto_choice(report.verdicts),
        "checks": {v.check: {"usable": v.usable, "detail": v.detail} for v in report.verdicts},
        "warnings": report.warnings,
        "facts": {n: (asdict(f) if isinstance(f, ProbeFailure) else to_json(f)) for n, f in report.findings.items()},
    }


def _machine_lines(findings: Findings) -> list[tuple[str, str]]:
    def get(name, kind):
        f = getattr(findings, name)
        return f if isinstance(f, kind) else None

    rows = []
    if (p := get("python", PythonFacts)) is not None:
        rows.append(("Python", f"{p.version} ({p.executable})"))
    if (c := get("cpu", CpuFacts)) is not None:
        rows.append(("CPU", f"{c.model}, {c.cores} cores; matrix features: {', '.join(c.matrix_features) or 'none'}"))
    if (g := get("cuda", CudaFacts)) is not None:
        gpus = "; ".join(f"{x.name} (compute capability {x.compute_capability}, {x.memory_gib:g} GiB)" for x in g.gpus)
        rows.append(("GPU", gpus or "none"))
        rows.append(
            (
                "cuda-python",
                f"{g.cuda_python or 'not installed'}; the driver supports CUDA "
                f"{g.driver_cuda or '- (no NVIDIA driver)'}",
            )
        )
    if (t := get("tensorrt", TensorRTFacts)) is not None and t.version:
        rows.append(("TensorRT", f"{t.version} (CUDA {t.cuda_major or '?'}): {', '.join(t.distributions)}"))
    if (b := get("chromium", ChromiumFacts)) is not None:
        rows.append(
            (
                "Chromium",
                f"{b.version or 'found'} ({b.path})"
                if b.path
                else "not found (the live viewer's browser test needs Debian's chromium)",
            )
        )
    if (st := get("station", StationFacts)) is not None:
        rows += _station_lines(st)
    if (gc := get("genicam", GenICamFacts)) is not None:
        if gc.aravis_error or gc.error:
            rows.append(("Cameras", f"GenICam: {gc.aravis_error or gc.error}"))
        elif not gc.devices:
            rows.append(("Cameras", "GenICam: Aravis found no GigE Vision or USB3 Vision camera"))
        for d in gc.devices:
            rows.append(("Cameras", f"{d.vendor} {d.model}, serial {d.serial}, at {d.address or '-'}: {d.source}"))
    if (w := get("weights", WeightsFacts)) is not None:
        state = (
            f"cached ({w.cached_file})"
            if w.cached_file
            else w.error or "not in the cache: downloaded on first use, or pass --weights FILE on an offline machine"
        )
        rows.append(("Weights", f"{w.model} {w.pretrained}: {state}; cache {w.cache_dir}"))
        if not w.error:
            dino = ", ".join(f"{b} ({path})" for b, path in w.dinov2.items()) or "none cached (give --weights FILE)"
            rows.append(("Weights", f"DINOv2 for --method anomalydino: {dino}"))
    return rows


def _station_lines(st: StationFacts) -> list[tuple[str, str]]:
    """`clipad station`'s channels: MQTT and OPC UA (the `station` extra), metrics."""

    def lib(f: LibraryFacts, name: str, what: str) -> str:
        if f.version is None:
            return f"{name} not installed: no {what} (pip install 'clipad[station]')"
        return f"{name} {f.version}" + (f", but it does not import: {f.error}" if f.error else f": {what}")

    broker = f"; a local broker at {st.mosquitto}" if st.mosquitto else "; no local broker (the line's is elsewhere?)"
    return [
        ("MQTT", lib(st.mqtt, "paho-mqtt", "results and triggers over MQTT") + broker),
        ("OPC UA", lib(st.opcua, "asyncua", "the station's OPC UA server")),
        ("Metrics", lib(st.metrics, "prometheus-client", "the station's /metrics")),
    ]


def render_text(report: DoctorReport) -> str:
    from clipad import __version__

    mark = {True: "yes", False: "NO", None: "?"}
    lines = [
        f"clipad {__version__} doctor ({report.seconds:.1f} s)",
        "",
        f"--backend auto uses: {auto_choice(report.verdicts)}",
        "",
        "Backends",
    ]
    lines += [f"  {v.check:<12} {mark[v.usable]:<4} {v.detail}" for v in report.verdicts]
    lines += ["", "Machine"]
    lines += [f"  {k:<12} {v}" for k, v in _machine_lines(report.findings)]
    if report.warnings:
        lines += ["", "Warnings"] + [f"  - {w}" for w in report.warnings]
    return "\n".join(lines)


def unmet(report: DoctorReport, require: tuple[str, ...]) -> list[Verdict]:
    """The required checks that cannot work here."""
    return [report.verdict(r) for r in require if report.verdict(r).usable is not True]
