"""`clipad reference add`: more good images into an export's reference memory.

The export is redone from its manifest through the one export path (``clipad.deploy.export``:
lock, staging directory, atomic swap, parity of every graph) with the existing memory as a
prior: the new memory is the k-center coreset (same bound) of the old memory and the new
images' patch tokens (method.md section 14). What the old graph's constants described is gone
with it, and the manifest says so in its warnings: the calibration constants and an INT8 graph
(both measured on the old graph) and a TensorRT plan (built from it) are not carried over.
"""

from __future__ import annotations

from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import Artifacts, load_artifacts
from clipad.deploy.export import ExportConfig, export, prompt_set_sha256
from clipad.deploy.manifest import HEADS_FILE, REFERENCE_MEMORY
from clipad.deploy.rebuild import weight_spec
from clipad.deploy.reference_set import Prior, ReferenceConfig, load_memory
from clipad.methods.registry import get_method
from clipad.model.prompts import load_prompt_set


def add_reference(root: str | Path, images: str, tasks: Tasks, device: str = "cpu") -> Artifacts:
    """Re-bake the memory of the artifacts at ``root`` with the good images at ``images``."""
    art = load_artifacts(root)
    m = art.manifest
    if m.anomalydino is not None:
        raise ClipadError(
            f"{root} is an AnomalyDINO export: export it again with all the good images (--reference GOOD_IMAGES)"
        )
    if m.reference is None or m.rvs is None or m.prompts is None:
        raise ClipadError(f"{root} has no reference memory: export it with --reference GOOD_IMAGES first")
    prompts = load_prompt_set(m.prompts.source)
    if prompt_set_sha256(prompts) != m.prompts.sha256:
        raise ClipadError(
            f"the prompt set '{m.prompts.source}' changed since export (sha256 differs); re-export instead"
        )
    memory = load_memory(art.verified_path(REFERENCE_MEMORY), m.reference)
    method = get_method(m.mode)
    heads = art.verified_path(HEADS_FILE) if method.takes_heads else None
    notes = [
        f"reference add: {what} of the previous graph removed; {todo}"
        for what, todo, present in (
            ("calibration constants", "run `clipad calibrate` again", m.calibrated),
            ("INT8 graph", "run `clipad calibrate --int8` again", "int8" in m.precisions),
            ("TensorRT plan", "run `clipad export --engine` again", m.engine is not None),
        )
        if present
    ]
    cfg = ExportConfig(
        category=m.category,
        out=Path(root),
        object_name=m.object_name,
        method=method.name,
        heads_path=heads,
        rvs=m.rvs.method,
        rvs_profile=m.rvs.profile,
        prompts=prompts,
        prompts_source=m.prompts.source,
        sigma=m.sigma,
        max_batch=m.max_batch,
        precision="fp32" if m.parity.figures("fp16") is None else "all",
        reference=ReferenceConfig(images, None, m.reference.memory_patches, Prior(memory, m.reference)),
        notes=tuple(notes),
    )
    loaded = method.load(weight_spec(m), device)
    if m.weights.source == "file" and loaded.weights_sha256 != m.weights.sha256:
        raise ClipadError(f"weights file {m.weights.path} changed since export (sha256 differs); re-export instead")
    return export(loaded, cfg, tasks)
