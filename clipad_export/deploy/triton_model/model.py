"""Triton Python-backend model: the exported clipad graph run with onnxruntime inside Triton.

Written into ``<repo>/<category>_python/1/`` by ``clipad export --triton-repo`` (see
``clipad.deploy.triton_repo``); it runs on any Triton build, CPU-only ones included. Torch-free:
it needs numpy and onnxruntime in the Python that runs Triton's stub.

``initialize`` checks the graph's sha256 against the config's ``clipad_sha256`` parameter (the
manifest's hash) and refuses to load on a mismatch. ``execute`` runs all the requests Triton's
dynamic batcher hands it as one batch: inputs concatenated along the batch dimension, one
session run, outputs split back per request. Inputs and outputs are named by the config.

Tensors cross the stub boundary by DLPack, not ``as_numpy()``/``Tensor(name, array)``: the stub
of the nvidia-pytriton wheel (built against numpy 1) reads garbage inputs and returns empty
outputs through the numpy path when the environment has numpy 2 (seen with 0.7.0 and numpy
2.4), while DLPack is exact with either numpy. numpy 2 then reports a harmless capsule-name
complaint from the consumed capsule's destructor; ``_quiet_capsule`` drops exactly that one.
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

GPU_PROVIDER = "CUDAExecutionProvider"
_CAPSULE_COMPLAINT = "PyCapsule_GetPointer called with incorrect name"
_default_unraisable = sys.unraisablehook


def _quiet_capsule(unraisable):
    if not (isinstance(unraisable.exc_value, ValueError) and str(unraisable.exc_value) == _CAPSULE_COMPLAINT):
        _default_unraisable(unraisable)


sys.unraisablehook = _quiet_capsule


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _param(config: dict, key: str) -> str | None:
    return config.get("parameters", {}).get(key, {}).get("string_value")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name, file, expected = config["name"], _param(config, "clipad_file"), _param(config, "clipad_sha256")
        if not file or not expected:
            raise pb_utils.TritonModelException(f"{name}: config.pbtxt lacks the clipad_file/clipad_sha256 parameters")
        path = os.path.join(args["model_repository"], args["model_version"], file)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{name}: {path} is missing")
        actual = _sha256(path)
        if actual != expected:
            raise pb_utils.TritonModelException(
                f"{name}: {file} has sha256 {actual[:12]}..., the manifest's is {expected[:12]}...: "
                "re-export the repository"
            )
        gpu = args.get("model_instance_kind") == "GPU" and GPU_PROVIDER in ort.get_available_providers()
        providers = [GPU_PROVIDER, "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        threads = _param(config, "intra_op_threads")
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.inputs = [t["name"] for t in config["input"]]
        # Triton presents a batch-only output (config dims [1] with an empty reshape) as [b, 1];
        # the model itself produces it as [b], the reshaped form.
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        feeds = {n: [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, n)) for r in requests] for n in self.inputs}
        sizes = [len(x) for x in feeds[self.inputs[0]]]
        try:
            results = self.session.run(self.outputs, {n: np.concatenate(v) for n, v in feeds.items()})
        except Exception as err:  # noqa: BLE001 - every request of the batch gets the error
            error = pb_utils.TritonError(f"onnxruntime failed: {type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(out[start : start + n]).__dlpack__())
                for name, out in zip(self.outputs, results, strict=False)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
