"""A Triton Inference Server model repository from an artifact directory.

Layout: ``<repo>/<category>_onnx/{config.pbtxt, 1/model.onnx}`` (onnxruntime backend),
``<repo>/<category>_python/{config.pbtxt, 1/model.py, 1/model.onnx}`` (Triton's Python backend
running the same graph with onnxruntime: it loads on every Triton build, CPU-only ones included)
and, when the artifacts hold a TensorRT plan, ``<repo>/<category>_trt/{config.pbtxt, 1/model.plan}``
(tensorrt_plan). Each version folder holds the artifact file under its own name, and the config
names it (``default_model_filename``), so the repository does not depend on Triton's default
names. Batch is the first dimension, so dims leave it out; ``image_prob`` has no other
dimension, which Triton expresses as dims [1] with an empty reshape. Each config is parsed with
Triton's own ModelConfig protobuf (from tritonclient) and checked against the ONNX graph's
inputs and outputs before the repository is renamed into place. Each model folder carries the
marker ``.clipad-triton-model`` and is replaced only when it holds nothing but what clipad
writes there (``clipad.core.owned``); an export stages its models before it swaps the artifacts
in and swaps the models in right after them.

Every config carries the manifest's sha256 of the file it serves (``parameters``:
``clipad_file`` and ``clipad_sha256``): the Python model refuses to load a graph with another
hash, and the Triton client backend refuses a server model whose hash is not its manifest's.
Dynamic batching prefers the batch the artifacts are tuned for (the plan's opt batch, else
min(8, max batch)) and the max batch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.core.owned import FolderKind, Staged, check_out, open_stage, resolve_out
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ONNX_FP16, ONNX_FP32, PLAN, Manifest, OnnxSpec, TensorSpec

PYTHON_MODEL = Path(__file__).with_name("triton_model") / "model.py"  # package data, copied into <cat>_python/1/
HASH_PARAM, FILE_PARAM = "clipad_sha256", "clipad_file"
QUEUE_DELAY_US = 2000
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def require_model_config():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ClipadError(
            "--triton-repo needs tritonclient[grpc] (pip install 'tritonclient[grpc]') to validate the config"
        ) from None
    return model_config_pb2


def preferred_batches(m: Manifest) -> list[int]:
    """Dynamic batching's preferred sizes: the batch the artifacts are tuned for and the max batch."""
    opt = m.engine.profile.opt if m.engine is not None else min(8, m.max_batch)
    return sorted({opt, m.max_batch})


def config_text(
    name: str,
    platform: str,
    max_batch: int,
    io: OnnxSpec,
    model_file: str | None = None,
    sha256: str | None = None,
    preferred: list[int] | None = None,
    queue_delay_us: int = QUEUE_DELAY_US,
) -> str:
    """config.pbtxt for one model; ``io`` is the manifest's ONNX io spec (batch dim first);
    ``model_file``: the file name in the version folder, when not Triton's default; ``sha256``:
    the manifest's hash of that file (a ``parameters`` entry); ``platform`` ``python`` writes a
    Python-backend model (``backend: "python"``, on CPU instances)."""

    def tensor(t: TensorSpec) -> str:
        dims = [int(d) for d in t.shape[1:]]
        extra = ""
        if not dims:  # batch-only tensor
            dims, extra = [1], " reshape: { shape: [ ] }"
        return (
            f'  {{ name: "{t.name}" data_type: {TRITON_DTYPES[t.dtype]} dims: [ {", ".join(map(str, dims))} ]{extra} }}'
        )

    python = platform == "python"
    batching = f"max_queue_delay_microseconds: {queue_delay_us}"
    if preferred:
        batching = f"preferred_batch_size: [ {', '.join(map(str, preferred))} ] " + batching
    params = []
    if sha256 is not None:
        params = [
            f'parameters {{ key: "{FILE_PARAM}" value: {{ string_value: "{model_file}" }} }}',
            f'parameters {{ key: "{HASH_PARAM}" value: {{ string_value: "{sha256}" }} }}',
        ]
    lines = [
        f'name: "{name}"',
        'backend: "python"' if python else f'platform: "{platform}"',
        *([f'default_model_filename: "{model_file}"'] if model_file and not python else []),
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(tensor(t) for t in io.inputs),
        "]",
        "output [",
        ",\n".join(tensor(t) for t in io.outputs),
        "]",
        f"dynamic_batching {{ {batching} }}",
        f"instance_group [ {{ kind: {'KIND_CPU' if python else 'KIND_GPU'} count: 1 }} ]",
        *params,
    ]
    return "\n".join(lines) + "\n"


def _tensor_spec(t: dict) -> tuple[str, str, list[int]]:
    """(name, data_type, dims as the model sees them) from a config tensor in JSON form."""
    dims = t["reshape"].get("shape", []) if "reshape" in t else t.get("dims", [])  # JSON leaves an empty shape out
    return t["name"], t.get("data_type", ""), [int(d) for d in dims]


def config_difference(config: dict, io: OnnxSpec, max_batch: int) -> str | None:
    """The first difference between a Triton model config in JSON form (a server's answer, or a
    parsed config.pbtxt) and the manifest's ``io`` and max batch, or None. Used by the repository
    writer and the Triton client backend alike."""
    if int(config.get("max_batch_size", 0)) != max_batch:
        return f"max_batch_size {config.get('max_batch_size', 0)} vs the manifest's {max_batch}"
    for kind, declared, expected in (
        ("input", config.get("input", []), io.inputs),
        ("output", config.get("output", []), io.outputs),
    ):
        got = [_tensor_spec(t) for t in declared]
        if [g[0] for g in got] != [e.name for e in expected]:
            return f"{kind}s {[g[0] for g in got]} vs the manifest's {[e.name for e in expected]}"
        for (name, dtype, dims), e in zip(got, expected, strict=False):
            if dtype != TRITON_DTYPES[e.dtype]:
                return f"{kind} {name}: {dtype} vs the manifest's {e.dtype}"
            if dims != [int(d) for d in e.shape[1:]]:
                return f"{kind} {name}: dims {dims} vs the manifest's {[int(d) for d in e.shape[1:]]}"
    return None


def validate_config(text: str, io: OnnxSpec, max_batch: int):
    """Parse with Triton's ModelConfig and check names, dtypes, dims and batch against ``io``."""
    from google.protobuf import json_format, text_format

    pb = require_model_config()
    try:
        cfg = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as err:
        raise ClipadError(f"generated Triton config does not parse: {err}") from None
    diff = config_difference(json_format.MessageToDict(cfg, preserving_proto_field_name=True), io, max_batch)
    if diff:
        raise ClipadError(f"generated Triton config differs from the graph: {diff}")
    return cfg


TRITON_MODEL = FolderKind(
    "triton-model",
    lambda rel: (
        rel == "config.pbtxt"
        or rel in {f"1/{n}" for n in (ONNX_FP32, ONNX_FP16, PLAN, PYTHON_MODEL.name)}
        or rel.startswith("1/__pycache__/")
    ),  # Triton's Python backend compiles model.py there
)


def model_names(category: str, plan: bool) -> list[str]:
    """The Triton models of a category's repository: ONNX Runtime, Python and (with a plan) TensorRT."""
    return [f"{category}_onnx", f"{category}_python"] + ([f"{category}_trt"] if plan else [])


def check_triton_repo(repo: Path, category: str) -> None:
    """Refuse, in one line and before any work, a --triton-repo that cannot be written or whose
    models of ``category`` clipad may not replace (``clipad.core.owned``)."""
    repo = resolve_out(repo)
    if repo.exists() and not repo.is_dir():
        raise ClipadError(f"--triton-repo {repo} is a file; it names a folder")
    probe = repo
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ClipadError(f"cannot write to {probe} (--triton-repo {repo})")
    for name in model_names(category, plan=True):
        check_out(repo / name, TRITON_MODEL, "--triton-repo model")


@dataclass
class StagedRepo:
    """A category's models written and validated beside their places in the repository; ``commit``
    swaps them in (after the artifacts they serve), ``discard`` removes them."""

    stages: list[Staged]

    def commit(self) -> list[str]:
        for s in self.stages:
            s.commit()
        return [s.out.name for s in self.stages]

    def discard(self) -> None:
        for s in self.stages:
            s.discard()


def stage_triton_repo(artifacts: Artifacts, repo: str | Path) -> StagedRepo:
    """Write and validate this category's models for ``repo`` (from ``artifacts``, which may be a
    staging directory) without touching the models there yet."""
    repo = resolve_out(repo)
    m = artifacts.manifest
    io, max_batch = m.onnx, m.max_batch
    onnx_file = (
        ONNX_FP32 if artifacts.has(ONNX_FP32) else ONNX_FP16
    )  # FP16 only in artifacts exported before model.onnx was kept
    names = model_names(m.category, artifacts.has(PLAN))
    sources = [(names[0], "onnxruntime_onnx", onnx_file), (names[1], "python", onnx_file)]
    sources += [(names[2], "tensorrt_plan", PLAN)] if len(names) > 2 else []
    staged = StagedRepo([])
    try:
        for name, platform, src in sources:
            text = config_text(name, platform, max_batch, io, src, m.files[src], preferred_batches(m))
            validate_config(text, io, max_batch)
            stage = open_stage(repo / name, TRITON_MODEL, "--triton-repo model")
            staged.stages.append(stage)
            try:
                (stage.path / "1").mkdir()
                (stage.path / "config.pbtxt").write_text(text)
                shutil.copy2(artifacts.verified_path(src), stage.path / "1" / src)
                if platform == "python":
                    shutil.copy2(PYTHON_MODEL, stage.path / "1" / PYTHON_MODEL.name)
            except OSError as err:
                raise ClipadError(f"cannot write Triton model {repo / name}: {err.strerror or err}") from None
    except BaseException:
        staged.discard()
        raise
    return staged


def write_triton_repo(artifacts: Artifacts, repo: str | Path) -> list[str]:
    """Write (or replace) this category's models in ``repo``; returns the model names."""
    staged = stage_triton_repo(artifacts, repo)
    try:
        return staged.commit()
    finally:
        staged.discard()
