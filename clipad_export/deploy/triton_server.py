"""A local Triton Inference Server for development and tests, from the ``nvidia-pytriton`` wheel.

The wheel ships a real ``tritonserver`` binary (``pytriton/tritonserver/bin``), its libraries
(``nvidia_pytriton.libs``) and the Python backend only, so on such a server only the
``<category>_python`` models of a repository load (``loadable_models``); NVIDIA's containers
run the ``_onnx`` and ``_trt`` models too. The Python backend needs its stub for the running
Python beside ``libtriton_python.so``: ``LocalTriton`` copies both into a temporary backend
folder it owns (site-packages is never written), puts this Python's ``bin`` first on PATH (the
stub then imports this environment's numpy and onnxruntime), binds loopback ports only, waits
for readiness and stops the server with SIGTERM, then SIGKILL.

Torch-free; nothing in the runtime imports it (the Triton client backend talks to any server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.core.values import PORT

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # SIGKILL after this
EXIT_TIMEOUT_S = 5  # the server's own wait for in-flight requests after SIGTERM
NOT_INSTALLED = (
    "a local Triton server needs the nvidia-pytriton wheel: pip install --no-deps nvidia-pytriton "
    "(--no-deps: it pins numpy<2, and only its tritonserver binary is used)"
)
_BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server lives: the binary, its libraries, the backends and the stubs."""

    binary: Path
    libs: Path
    backends: Path
    stub: Path


def find_install() -> TritonInstall:
    """The ``nvidia-pytriton`` wheel's server for this Python; one line when it is not installed."""
    import importlib.util

    # Located, not imported: pytriton's own package needs dependencies that --no-deps leaves out.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ClipadError(NOT_INSTALLED)
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstall(
        root / "bin" / "tritonserver",
        root.parents[1] / "nvidia_pytriton.libs",
        root / "backends",
        root / "python_backend_stubs" / py / "triton_python_backend_stub",
    )
    for what, path in (
        ("tritonserver binary", found.binary),
        ("Python backend", found.backends / "python"),
        (f"Python {py} backend stub", found.stub),
    ):
        if not path.exists():
            raise ClipadError(f"the nvidia-pytriton wheel has no {what} ({path})")
    return found


def model_backend(config: Path) -> str:
    """The backend a model's config.pbtxt asks for: python, onnxruntime, tensorrt, ... ("unknown"
    when Triton's ModelConfig cannot parse it)."""
    from google.protobuf import text_format

    from clipad.deploy.triton_repo import require_model_config

    try:
        cfg = text_format.Parse(config.read_text(), require_model_config().ModelConfig())
    except text_format.ParseError:
        return "unknown"
    return cfg.backend or _BACKEND_OF_PLATFORM.get(cfg.platform, cfg.platform or "unknown")


def loadable_models(repo: Path, backends: Path) -> list[str]:
    """The models of ``repo`` whose backend is in ``backends`` (sorted)."""
    return sorted(c.parent.name for c in repo.glob("*/config.pbtxt") if (backends / model_backend(c)).is_dir())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    def __post_init__(self) -> None:
        for flag, port in (("--http-port", self.http), ("--grpc-port", self.grpc), ("--metrics-port", self.metrics)):
            PORT.parse(port, flag)

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


class LocalTriton:
    """``with LocalTriton(repo) as server:`` a tritonserver on loopback serving ``models`` (default:
    every model of ``repo`` this build can load), ready when the block starts. ``server.grpc_url``
    and ``server.http_url`` name it; ``stop()`` and ``start()`` restart it on the same ports; the
    log is ``server.log_path``."""

    def __init__(
        self,
        repo: str | Path,
        models: list[str] | None = None,
        ports: Ports | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        log_path: str | Path | None = None,
    ):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ClipadError(f"Triton repository {repo} does not exist")
        self.install = find_install()
        self._tmp = Path(tempfile.mkdtemp(prefix="clipad-triton-"))
        self.backends = self._backend_dir()
        loadable = loadable_models(self.repo, self.backends)
        unknown = [m for m in models or [] if not (self.repo / m).is_dir()]
        if unknown:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise ClipadError(f"--models: {repo} has no model '{unknown[0]}' (it has: {', '.join(loadable) or 'none'})")
        self.models = models if models is not None else loadable
        if not self.models:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise ClipadError(
                f"{repo} has no model this Triton build can load (it has the Python backend only: "
                "export with `clipad export --triton-repo` to get <category>_python)"
            )
        self.ports = ports or Ports.free()
        self.start_timeout_s = start_timeout_s
        self.log_path = Path(log_path) if log_path else self._tmp / "tritonserver.log"
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def _backend_dir(self) -> Path:
        """The wheel's backends with the stub for this Python copied beside libtriton_python.so."""
        dst = self._tmp / "backends"
        shutil.copytree(self.install.backends, dst, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.install.stub, dst / "python" / self.install.stub.name)
        return dst

    def command(self) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={self.backends}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.metrics}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(self.install.libs)]
        # The stub links libpython3.X.so.1.0: take this interpreter's when it has a shared one
        # (pyenv, conda), else the system's (Debian: the libpython3.X package).
        libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
        if libdir and ldlib and ldlib.endswith(".so") and (Path(libdir) / ldlib).exists():
            libs.append(libdir)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            libs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
        )
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> LocalTriton:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            raise ClipadError(f"cannot start {self.install.binary}: {err.strerror or err}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClipadError(
                    f"tritonserver exited with code {self.proc.returncode} while starting: {self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ClipadError(f"tritonserver was not ready within {self.start_timeout_s:.0f} s: {self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (None when not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the server and its stubs (a crash, for fault tests); ``start()`` brings it back on
        the same ports."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill_group(proc)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalTriton:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def _group_stub_regions(pgid: int) -> list[str]:
    """The shared-memory regions of the Python-backend stubs in process group ``pgid`` (each stub
    gets its region's name as its second argument)."""
    regions = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) != pgid:
                continue
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 2:
            regions.append(argv[2].decode(errors="replace"))
    return regions


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the server's process group (it leads its own session): stubs
    outlive a killed server otherwise, and so do their shared-memory regions, removed here."""
    regions = _group_stub_regions(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + 5
    while _group_stub_regions(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name in regions:
        if "/" not in name:
            Path("/dev/shm", name).unlink(missing_ok=True)


def serve_until_stopped(server: LocalTriton, log) -> int:
    """Start ``server``, report its URLs through ``log`` and wait until it exits or this process gets
    SIGINT/SIGTERM (then stop it cleanly); the server's exit code, 0 after a requested stop."""
    stop = {"signal": None}

    def handler(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            log(
                f"tritonserver ready: {server.grpc_url} {server.http_url} "
                f"metrics http://127.0.0.1:{server.ports.metrics}/metrics "
                f"models {', '.join(server.models)} (log {server.log_path}); Ctrl-C stops it"
            )
            while stop["signal"] is None and server.proc is not None and server.proc.poll() is None:
                time.sleep(0.2)
            if stop["signal"] is None:
                code = server.proc.returncode if server.proc is not None else 1
                raise ClipadError(f"tritonserver exited with code {code}: {server.log_tail()}")
            server.stop()
            return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
