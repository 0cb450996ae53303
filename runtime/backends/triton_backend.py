"""Triton backend: the exported model served by a Triton Inference Server, over gRPC or HTTP.

``--backend triton --url grpc://HOST:8001`` (or ``http://HOST:8000``). The server returns the
raw outputs; scoring and the calibration constants stay in the client, as with every backend.

At open, one line and no backend when anything disagrees: the server is live and ready, the
model (default ``<category>_python``, the model of `clipad export --triton-repo` that loads on
every Triton build) is ready, its config's inputs, outputs and max batch equal the manifest's,
and its ``clipad_sha256`` parameter equals the manifest's hash of the file it names
(``clipad_file``), so a server serving another export is refused.

A call (at most the model's max batch) is split into up to ``inflight`` requests of about equal
size, sent at once (one client per worker thread): one client keeps several requests in a
remote server's queue, and the server's dynamic batcher forms its batches from the requests of
all clients (with ``inflight`` 1 every call is one request). Every
request has a timeout. When the server cannot answer (down, restarting, timed out) the call
raises ``BackendUnavailable``: the pipeline retries with backoff, records that batch's frames
as errors and goes on; the next call connects again (clients are rebuilt after a failure,
shared-memory regions registered again). Every reconnect runs the checks of the first connection
again before a request is sent: a server restarted with another export (another hash, config or
served file under the same model name) stops the run in one line, since the calibration
constants belong to the model of the manifest.

``shm``: system shared memory for inputs and outputs when client and server share a host
(``tritonclient.utils.shared_memory``), one region set per worker thread.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlparse

import numpy as np

from clipad.core.choices import Device, Precision
from clipad.core.errors import ClipadError
from clipad.core.redaction import is_credential_name, redact
from clipad.core.values import INFLIGHT, TRITON_TIMEOUT
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ONNX_FILES, PLAN, TensorSpec
from clipad.deploy.triton_repo import FILE_PARAM, HASH_PARAM, TRITON_DTYPES, config_difference
from clipad.runtime.backends.base import Backend, BackendInfo, BackendUnavailable

PRECISION_OF_FILE = {file: precision for precision, file in ONNX_FILES.items()}


@dataclass(frozen=True)
class TritonTarget:
    """Where the model is served. url: grpc://HOST:PORT or http://HOST:PORT; model: the Triton
    model name (None: ``<category>_python``); version: "" for the server's policy; timeout_s:
    per request; inflight: requests in flight per client; shm: system shared memory (same host)."""

    url: str
    model: str | None = None
    version: str = ""
    timeout_s: float = 10.0
    inflight: int = 2
    shm: bool = False

    def check(self) -> None:
        try:
            parsed = urlparse(self.url)
            port = parsed.port
        except ValueError:  # a port that is no number, an unclosed '['
            parsed, port = urlparse(""), None
        if parsed.scheme not in ("grpc", "http") or not parsed.hostname or not port:
            raise ClipadError(f"--url must be grpc://HOST:PORT or http://HOST:PORT, got '{redact(self.url)}'")
        # tritonclient takes HOST:PORT only: userinfo or a query would be silently dropped, never sent
        if "@" in parsed.netloc or any(is_credential_name(k) for k, _ in parse_qsl(parsed.query, True)):
            raise ClipadError(
                f"--url {redact(self.url)} carries credentials, which the Triton client does not send; "
                "give grpc://HOST:PORT or http://HOST:PORT (protect the server at the network level)"
            )
        TRITON_TIMEOUT.parse(self.timeout_s, "--triton-timeout")
        INFLIGHT.parse(self.inflight, "--triton-inflight")
        if self.version and not self.version.isdigit():  # Triton's versions are numbers; "": the server's policy
            raise ClipadError(f"--triton-version must be a version number, got '{self.version}'")

    @property
    def protocol(self) -> str:
        return urlparse(self.url).scheme

    @property
    def address(self) -> str:
        p = urlparse(self.url)
        return f"{p.hostname}:{p.port}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Client:
    """One protocol client (and its shared-memory regions) for one worker thread."""

    def __init__(self, target: TritonTarget, io: tuple[TensorSpec, list[TensorSpec]], max_batch: int):
        self.target = target
        if target.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self.tc = tc
        self.client = tc.InferenceServerClient(
            target.address,
            **(
                {}
                if target.protocol == "grpc"
                else {"connection_timeout": target.timeout_s, "network_timeout": target.timeout_s}
            ),
        )
        self.input, self.outputs = io
        self.regions: list[tuple[str, object, int]] = []
        if target.shm:
            try:
                self._register_shm(max_batch)
            except BaseException:
                self.close()
                raise

    def _bytes(self, t: TensorSpec, batch: int) -> int:
        return int(np.prod([batch, *(int(d) for d in t.shape[1:])])) * np.dtype(t.dtype).itemsize

    def _register_shm(self, max_batch: int) -> None:
        import tritonclient.utils.shared_memory as shm

        for t in [self.input, *self.outputs]:
            name = f"clipad_{os.getpid()}_{uuid.uuid4().hex[:8]}_{t.name}"
            size = self._bytes(t, max_batch)
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            self.regions.append((name, handle, size))
            self.client.register_system_shared_memory(name, f"/{name}", size)

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tc, b = self.tc, len(images)
        inp = tc.InferInput(self.input.name, list(images.shape), TRITON_DTYPES[self.input.dtype].removeprefix("TYPE_"))
        outs = [tc.InferRequestedOutput(o.name) for o in self.outputs]
        if self.regions:
            import tritonclient.utils.shared_memory as shm

            name, handle, _ = self.regions[0]
            shm.set_shared_memory_region(handle, [images])
            inp.set_shared_memory(name, images.nbytes)
            for o, t, (oname, _, _) in zip(outs, self.outputs, self.regions[1:], strict=False):
                o.set_shared_memory(oname, self._bytes(t, b))
        else:
            inp.set_data_from_numpy(images)
        kw = {"client_timeout": self.target.timeout_s} if self.target.protocol == "grpc" else {}
        res = self.client.infer(self.target.model, [inp], model_version=self.target.version, outputs=outs, **kw)
        arrays = []
        handles: list[object | None] = [handle for _, handle, _ in self.regions[1:]] or [None] * len(self.outputs)
        for t, handle in zip(self.outputs, handles, strict=False):
            if handle is not None:
                import tritonclient.utils.shared_memory as shm

                shape = [b, *(int(d) for d in t.shape[1:])]
                arrays.append(np.array(shm.get_contents_as_numpy(handle, np.dtype(t.dtype), shape)))
            else:
                arrays.append(res.as_numpy(t.name))
        amap, prob = arrays[0], arrays[1]
        return amap.reshape(b, *amap.shape[-2:]), prob.reshape(b)

    def close(self) -> None:
        if self.regions:
            import tritonclient.utils.shared_memory as shm

            for name, handle, _ in self.regions:
                try:
                    self.client.unregister_system_shared_memory(name)
                except Exception:  # noqa: BLE001 - the server may be gone; the region is ours to free regardless
                    pass
                shm.destroy_shared_memory_region(handle)
            self.regions = []
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client of a dead server
            pass


def _close_clients(clients: list[_Client]) -> None:
    """Close and forget ``clients`` (in place): also run at exit for a backend never closed, so no
    shared-memory region outlives the process."""
    old = list(clients)
    clients.clear()
    for c in old:
        c.close()


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, artifacts: Artifacts, target: TritonTarget, precision: Precision | None = None):
        target.check()
        m = artifacts.manifest
        self.target = target if target.model else replace(target, model=f"{m.category}_python")
        if len(m.onnx.outputs) != 2:
            raise ClipadError(
                f"the manifest lists {len(m.onnx.outputs)} outputs, "
                "the Triton backend expects anomaly_map and image_prob"
            )
        self._io = (m.onnx.inputs[0], list(m.onnx.outputs))
        self._artifacts = artifacts
        config = self._check_server()
        self.max_batch = m.max_batch
        file = self._file = config["parameters"][FILE_PARAM]["string_value"]
        self.precision = m.engine.precision if file == PLAN and m.engine else PRECISION_OF_FILE.get(file, "fp32")
        if precision is not None and precision != self.precision:
            raise ClipadError(f"the Triton model {self.target.model} serves {file} ({self.precision}), not {precision}")
        kinds = {g.get("kind", "KIND_GPU") for g in config.get("instance_group", [])}
        self._device: Device = "cuda" if "KIND_GPU" in kinds else "cpu"
        self._local = threading.local()
        self._clients: list[_Client] = []
        self._finalizer = weakref.finalize(self, _close_clients, self._clients)
        self._lock = threading.Lock()
        self._generation = 0
        self._checked = 0  # the generation of clients whose server passed the checks of the first connection
        self._check_lock = threading.Lock()
        self._pool = (
            ThreadPoolExecutor(self.target.inflight, thread_name_prefix="triton") if self.target.inflight > 1 else None
        )
        if self.target.shm:  # register now, so a server on another host is refused at open
            try:
                self._client()
            except Exception as err:  # noqa: BLE001 - tritonclient's and the OS's errors
                self.close()
                raise ClipadError(
                    f"--triton-shm: cannot share memory with the server at {self.target.url} "
                    f"(client and server must share a host): {_first_line(err)}"
                ) from None

    def _check_server(self) -> dict:
        """The model's config (JSON form), after every check of the module docstring.
        ``BackendUnavailable`` when the server or the model does not answer (yet); ClipadError
        when it answers with another model."""
        config = self._fetch_config()
        t, m, root = self.target, self._artifacts.manifest, self._artifacts.root
        diff = config_difference(config, m.onnx, m.max_batch)
        if diff:
            raise ClipadError(f"the Triton model '{t.model}' does not match {root}: {diff}")
        params = config.get("parameters", {})
        file = params.get(FILE_PARAM, {}).get("string_value")
        sha = params.get(HASH_PARAM, {}).get("string_value")
        if not file or not sha:
            raise ClipadError(
                f"the Triton model '{t.model}' has no {HASH_PARAM}/{FILE_PARAM} parameters: "
                "serve a repository written by `clipad export --triton-repo`"
            )
        if m.files.get(file) != sha:
            raise ClipadError(
                f"the Triton model '{t.model}' serves a {file} with sha256 {sha[:12]}..., "
                f"the manifest in {root} has {str(m.files.get(file))[:12]}...: another export"
            )
        return config

    def _fetch_config(self) -> dict:
        """The model's config from a live, ready server; ``BackendUnavailable`` (a ClipadError)
        when the server or the model cannot answer."""
        t = self.target
        try:
            probe = _Client(TritonTarget(t.url, t.model, t.version, t.timeout_s), self._io, 1)
        except Exception as err:  # noqa: BLE001 - tritonclient raises its own and socket errors
            raise BackendUnavailable(f"cannot reach the Triton server at {t.url}: {_first_line(err)}") from None
        c = probe.client
        kw = {"client_timeout": t.timeout_s} if t.protocol == "grpc" else {}  # HTTP: the client's network_timeout
        try:
            try:
                live, ready = c.is_server_live(**kw), c.is_server_ready(**kw)
                model_ready = live and ready and c.is_model_ready(t.model, t.version, **kw)
            except Exception as err:  # noqa: BLE001
                raise BackendUnavailable(f"the Triton server at {t.url} does not answer ({_first_line(err)})") from None
            if not (live and ready):
                raise BackendUnavailable(f"the Triton server at {t.url} is {'not ready' if live else 'not live'}")
            if not model_ready:
                raise BackendUnavailable(
                    f"the Triton server at {t.url} has no ready model '{t.model}'"
                    f"{' version ' + t.version if t.version else ''} ({self._ready_models(c, t.protocol)})"
                )
            try:
                config = c.get_model_config(
                    t.model, t.version, **({"as_json": True, **kw} if t.protocol == "grpc" else {})
                )
            except Exception as err:  # noqa: BLE001
                raise BackendUnavailable(
                    f"the Triton server at {t.url} gave no model config ({_first_line(err)})"
                ) from None
        finally:
            probe.close()
        return config.get("config", config)

    def _recheck(self) -> None:
        """After a reconnect: the checks of the first connection again, once per generation of
        clients, so that a server restarted with another export is never used. A mismatch is a
        ClipadError that stops the run (the calibration belongs to another model); a server
        still restarting is ``BackendUnavailable``."""
        with self._check_lock:
            generation = self._generation
            if self._checked == generation:
                return
            config = self._check_server()
            file = config["parameters"][FILE_PARAM]["string_value"]
            if file != self._file:
                raise ClipadError(
                    f"after reconnecting, the Triton model '{self.target.model}' serves {file}, not {self._file} "
                    f"as at the first connection: another deployment; restart the run"
                )
            self._checked = generation

    @staticmethod
    def _ready_models(client, protocol: str) -> str:
        try:
            index = client.get_model_repository_index(**({"as_json": True} if protocol == "grpc" else {}))
            index = index.get("models", []) if isinstance(index, dict) else index
            ready = sorted(x["name"] for x in index if x.get("state") == "READY")
        except Exception:  # noqa: BLE001 - only for the message
            return "ready models unknown"
        return "ready: " + (", ".join(ready) or "none")

    def _client(self) -> _Client:
        c = getattr(self._local, "client", None)
        if c is None or getattr(self._local, "generation", -1) != self._generation:
            if self._checked != self._generation:
                self._recheck()
            c = _Client(self.target, self._io, self.max_batch)
            with self._lock:
                self._clients.append(c)
            self._local.client, self._local.generation = c, self._generation
        return c

    def _request(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._client().infer(images)
        except ClipadError:  # BackendUnavailable from the checks after a reconnect, or another model: stop
            raise
        except Exception as err:  # noqa: BLE001 - any transport or server error: the server cannot answer now
            self._reset()
            raise BackendUnavailable(f"Triton server at {self.target.url}: {_first_line(err)}") from None

    def _reset(self) -> None:
        """Drop every client (and its shared memory): the next request connects afresh."""
        with self._lock:
            old = list(self._clients)
            self._clients.clear()
            self._generation += 1
        _close_clients(old)

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunks = np.array_split(images, min(self.target.inflight, len(images)))
        if self._pool is None or len(chunks) == 1:
            results = [self._request(c) for c in chunks]
        else:
            results = [f.result() for f in [self._pool.submit(self._request, c) for c in chunks]]
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def info(self) -> BackendInfo:
        t = self.target
        return BackendInfo(
            self.name,
            self.precision,
            self._device,
            f"{t.model}{' v' + t.version if t.version else ''} at {t.url}, {t.inflight} in flight"
            f"{', shared memory' if t.shm else ''}",
            self.max_batch,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._reset()
