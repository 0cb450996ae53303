"""What of the TensorRT path can be checked without TensorRT: the engine-inspector reader on the
JSON shapes of TensorRT 10 and 11, the ONNX parser check on the graphs clipad really writes (FP32,
FP16, and the QDQ graph of `clipad calibrate --int8`) and on graphs it must refuse, the choice of
source graph and network flags per TensorRT major, the opt batch, and the plan checks the backend
runs at load. No stand-in for the tensorrt module is used: the build itself runs in
tests/test_engine.py where TensorRT and a GPU are.
"""

from __future__ import annotations

import copy
import inspect
import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clipad import cli
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.manifest import PLAN_META, EngineMeta
from clipad.deploy.tensorrt import build, inspector, parser_check, plan
from tests.helpers import assert_one_line_error, run

# --------------------------------------------------------------------------------------------
# Engine inspector JSON, TensorRT 10 and 11 shapes
# --------------------------------------------------------------------------------------------

# One small strongly typed engine (input cast, a quantize, an INT8 GEMM with fused dequantize, an
# FP16 Myelin region, an FP32 island, a shape layer), written the way each version's inspector
# prints it with ProfilingVerbosity.DETAILED.
# TensorRT 10: "Format/Datatype" per tensor; values from TREx's format table
# (tools/experimental/trt-engine-explorer/trex/activations.py, release/10.16) and the kgen type
# names of samples/sampleEditableTimingCache/README.md ("Format/Datatype: Float").
# TensorRT 11: split keys; "Datatype" and "Format" as in TensorRT 11.1's inspector schema
# (.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json), "DataType" as in the
# 10.x-to-11.x IEngineInspector migration guide; "I/O Tensors" replaces "Bindings".
LAYERS = [  # name, [(input type 10, input type 11)], [(output type 10, output type 11)], expected kind
    ("cast_in", [("Row major linear UInt8 format", "UInt8")], [("Row major linear FP32", "Float")], "fp32"),
    ("quantize", [("Row major linear FP32", "Float")], [("Row major Int8 format", "Int8")], "int8"),
    (
        "gemm_int8",
        [("Thirty-two wide channel vectorized row major Int8 format", "Int8")],
        [("Channel major FP16 format where channel % 8 == 0", "Half")],
        "int8",
    ),
    ("myelin_fp16", [("Half", "Half")], [("Half", "Half")], "fp16"),
    ("reformat", [("Row major linear FP32", "Float")], [("Row major linear FP16 format", "Half")], "fp16"),
    ("softmax_fp32", [("Row major linear FP32", "Float")], [("Float", "Float")], "fp32"),
    ("bf16_island", [("Row major linear FP32", "Float")], [("Row major linear BFloat16 format", "BFloat16")], "bf16"),
    ("shape", [("Row major linear FP32", "Float")], [("Row major linear Int64 format", "Int64")], "other"),
    ("no_type", [("N/A", "N/A")], [("N/A", "N/A")], "other"),
]
EXPECTED = {"fp32": 2, "int8": 2, "fp16": 2, "bf16": 1, "other": 2}


def _tensor(name: str, v10: str, v11: str, version: int, type_key: str) -> dict:
    # Concrete dimensions: clipad reads the inspector through an execution context with the opt
    # shape set (batch 8 here); only then does it show formats (NvInferRuntime.h, IEngineInspector).
    t = {"Name": name, "Location": "Device", "Dimensions": [8, 96, 96, 3]}
    if version == 10:
        t["Format/Datatype"] = v10
    else:  # the layout alone in "Format", so that only the type key can give the type
        t.update({"Format": "Row major linear format (kLINEAR)", type_key: v11})
    return t


def inspector_json(version: int, type_key: str = "Datatype") -> dict:
    layers = []
    for name, ins, outs, _ in LAYERS:
        layers.append(
            {
                "Name": name,
                "LayerType": "Reformat" if name == "reformat" else "kgen",
                "Inputs": [_tensor(f"{name}_in{i}", a, b, version, type_key) for i, (a, b) in enumerate(ins)],
                "Outputs": [_tensor(f"{name}_out{i}", a, b, version, type_key) for i, (a, b) in enumerate(outs)],
                "TacticName": "",
                "StreamId": 0,
                "Metadata": "",
            }
        )
    io = (
        ["image", "anomaly_map", "image_prob"]
        if version == 10
        else [{"Name": "image", "IOMode": "Input", "DataType": "UInt8", "Dimensions": [8, 96, 96, 3]}]
    )
    return {"Layers": layers, ("Bindings" if version == 10 else "I/O Tensors"): io}


@pytest.mark.parametrize("version,type_key", [(10, None), (11, "Datatype"), (11, "DataType")])
def test_inspector_reader_counts_both_versions_alike(version, type_key):
    info = json.loads(json.dumps(inspector_json(version, type_key)))  # as get_engine_information's string parses
    assert inspector.count_layer_precisions(info) == EXPECTED
    assert [inspector.layer_kind(layer) for layer in info["Layers"]] == [kind for *_, kind in LAYERS]
    assert (
        inspector.count_layer_precisions(info["Layers"]) == EXPECTED
    )  # the bare list (trtexec --exportLayerInfo style)


def test_inspector_split_keys_prefer_the_data_type():
    # TensorRT 11: the data type decides even when the format name would say something else.
    layer = {
        "Name": "x",
        "Inputs": [],
        "Outputs": [{"Name": "y", "Format": "Row major linear FP32 format (kLINEAR)", "Datatype": "Half"}],
    }
    assert inspector.layer_kind(layer) == "fp16"
    layer["Outputs"][0] = {"Name": "y", "Format": "Channel major FP16 format where channel % 8 == 0"}  # no type key
    assert inspector.layer_kind(layer) == "fp16"


@pytest.mark.parametrize(
    "text,kind",
    [
        ("Row major linear FP32", "fp32"),
        ("Float", "fp32"),
        ("Half", "fp16"),
        ("Row major linear FP16 format", "fp16"),
        ("BFloat16", "bf16"),
        ("Channel major BFloat16 format where channel % 8 == 0", "bf16"),
        ("Int8", "int8"),
        ("Row major Int8 format", "int8"),
        ("UInt8", "uint8"),
        ("Row major linear UInt8 format", "uint8"),
        ("Row major linear FP8 format", "fp8"),
        ("Int64", "int64"),
        ("Row major linear BOOL", "bool"),
        ("N/A", None),
        ("Unknown format", None),
    ],
)
def test_type_names(text, kind):
    assert inspector.tensor_type(text) == kind


def test_inspector_without_types_is_an_error_not_an_fp32_engine():
    # LAYER_NAMES_ONLY verbosity gives names only; an unknown future key spelling gives no types.
    with pytest.raises(ClipadError, match="no layer data types .*layers are str"):
        inspector.count_layer_precisions({"Layers": ["conv1 + relu", "matmul"]})
    odd = {"Layers": [{"Name": "a", "Inputs": [], "Outputs": [{"Name": "t", "ElementType": "Half"}]}]}
    with pytest.raises(ClipadError, match="tensor keys: ElementType, Name"):
        inspector.count_layer_precisions(odd)
    assert inspector.count_layer_precisions({"Layers": []}) == {}


def test_inspector_without_a_context_names_the_cause():
    # Without an execution context whose input shapes are set, "values dependent on input shapes
    # will be displayed as -1 and format information will not be shown" (NvInferRuntime.h): the
    # same layers with -1 dimensions and no format or type field.
    info = inspector_json(10)
    for layer in info["Layers"]:
        for t in layer["Inputs"] + layer["Outputs"]:
            del t["Format/Datatype"]
            t["Dimensions"] = [-1, 96, 96, 3]
    with pytest.raises(ClipadError, match="dimensions are -1: the inspector was read without an execution context"):
        inspector.count_layer_precisions(info)


def test_engine_layer_precisions_attaches_a_context_with_the_shapes_set():
    # Read as source (no stand-in tensorrt module): the context is made, every input shape set and
    # checked, and the context attached to the inspector before the JSON is read.
    src = inspect.getsource(inspector.engine_layer_precisions)
    order = [
        src.index(s)
        for s in (
            "create_execution_context()",
            "set_input_shape(",
            "create_engine_inspector()",
            "inspector.execution_context = context",
            "get_engine_information(",
        )
    ]
    assert order == sorted(order)
    assert "input_shapes" in inspect.signature(inspector.engine_layer_precisions).parameters
    build_src = inspect.getsource(build.build_engine)
    assert "engine_layer_precisions(trt, engine, {spec.name: opt_shape})" in build_src


# --------------------------------------------------------------------------------------------
# TF32 and the timing cache
# --------------------------------------------------------------------------------------------


def test_tf32_is_cleared_before_the_build_and_recorded(sidecar):
    src = inspect.getsource(build.build_engine)
    assert src.index("config.clear_flag(trt.BuilderFlag.TF32)") < src.index("build_serialized_network(")
    _, meta = sidecar
    assert meta.tf32 is False and json.loads(json.dumps(meta.model_dump()))["tf32"] is False


def test_timing_cache_round_trip_and_damage(tmp_path):
    path = tmp_path / "cache" / "trt_timing.cache"
    warnings: list[str] = []
    assert build.read_timing_cache(path, warnings.append) == b"" and warnings == []  # none yet: a new cache
    blob = bytes(range(256)) * 40
    build.write_timing_cache(path, blob)
    assert build.read_timing_cache(path, warnings.append) == blob and warnings == []
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    whole = path.read_bytes()
    for damaged in (
        whole[: len(whole) - 100],
        whole[:20],
        whole[:-1] + b"x",
        blob,
    ):  # torn, torn header, altered, unframed
        path.write_bytes(damaged)
        warnings.clear()
        assert build.read_timing_cache(path, warnings.append) == b""
        assert len(warnings) == 1 and "discarded and rebuilt" in warnings[0]


def test_timing_cache_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "trt_timing.cache"
    build.write_timing_cache(path, b"old timings")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "frame_timing_cache", fail)
    with pytest.raises(OSError):
        build.write_timing_cache(path, b"new timings")
    assert build.read_timing_cache(path) == b"old timings"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# --------------------------------------------------------------------------------------------
# The ONNX parser check on the graphs clipad writes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, synth_root):
    """The tiny model exported with random weights (max batch 4), then `clipad calibrate --int8`
    on synthetic images: the artifact directory with model.onnx, model.fp16.onnx and model.int8.onnx."""
    root = tmp_path_factory.mktemp("trt") / "a"
    assert (
        cli.run(
            [
                "export",
                "--category",
                "washer",
                "--model",
                "clipad-tiny",
                "--random-weights",
                "--quiet",
                "--max-batch",
                "4",
                "--out",
                str(root),
            ]
        )
        == 0
    )
    assert (
        cli.run(
            [
                "calibrate",
                "--artifacts",
                str(root),
                "--int8",
                "--images",
                str(synth_root / "washer" / "test" / "good"),
                "--min-agreement",
                "0.0",
                "--quiet",
            ]
        )
        == 0
    )
    return root


def test_op_check_passes_the_graphs_clipad_writes(calibrated, tmp_path):
    from clipad.deploy.fp16 import convert_fp16

    convert_fp16(
        calibrated / "model.onnx", tmp_path / "model.fp16.onnx"
    )  # the FP16 conversion, whatever parity decided
    graphs = [calibrated / "model.onnx", tmp_path / "model.fp16.onnx", calibrated / "model.int8.onnx"]
    if (calibrated / "model.fp16.onnx").is_file():
        graphs.append(calibrated / "model.fp16.onnx")
    for path in graphs:
        assert parser_check.unsupported_ops(path) == [], path.name


def test_int8_graph_is_what_the_parser_check_reasons_about(calibrated):
    """The QDQ graph holds what the per-input rules were written for: activation quantizers with
    an int8 zero point of 0 (the input that used to be flagged), and weights stored as INT8 with
    a per-channel DequantizeLinear on axis 1 for MatMul (ONNX Runtime's default for MatMul) and 0 for Conv."""
    g = onnx.load(str(calibrated / "model.int8.onnx")).graph
    inits = {t.name: t for t in g.initializer}
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert q and all(
        inits[n.input[2]].data_type == TensorProto.INT8 and not numpy_helper.to_array(inits[n.input[2]]).any()
        for n in q
    )
    consumers = {i: n.op_type for n in g.node for i in n.input}
    weight_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    axes = {(consumers[n.output[0]], next(a.i for a in n.attribute if a.name == "axis")) for n in weight_dq}
    assert ("MatMul", 1) in axes and axes <= {("MatMul", 1), ("Conv", 0), ("Gemm", 1), ("Gemm", 0)}
    assert all(inits[n.input[0]].data_type == TensorProto.INT8 for n in weight_dq)


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="g.onnx"):
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _qdq_matmul(tmp_path, zero=None, act_scale=None, weight_axis=1, weight_scale=None):
    """x float [2, 4] -> Q/DQ (per tensor) -> MatMul with INT8 weights [4, 3] through a per-channel DQ."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    w = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    inits = [
        numpy_helper.from_array(np.array(0.05 if act_scale is None else act_scale, np.float32), "x_scale"),
        zero if zero is not None else numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(
            np.full(w.shape[weight_axis], 0.1, np.float32) if weight_scale is None else weight_scale, "w_scale"
        ),
        numpy_helper.from_array(np.zeros(w.shape[weight_axis], np.int8), "w_zero"),
    ]
    zero_name = inits[1].name
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", zero_name], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", zero_name], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=weight_axis, name="w_dq"),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    return _save(tmp_path, nodes, [x], [y], inits)


def test_qdq_rules_by_input(tmp_path):
    assert parser_check.unsupported_ops(_qdq_matmul(tmp_path)) == []  # int8 zero point 0, per-channel weights on axis 1
    assert parser_check.unsupported_ops(_qdq_matmul(tmp_path, weight_axis=0)) == []  # per-channel on axis 0 (4 scales)

    uint8_zero = numpy_helper.from_array(np.array(0, np.uint8), "x_zero_u8")
    problems = parser_check.unsupported_ops(_qdq_matmul(tmp_path, zero=uint8_zero))
    assert any(p.startswith("QuantizeLinear (q): uint8 zero point") for p in problems), problems
    assert any(p.startswith("DequantizeLinear (dq): uint8 input 'xq'") for p in problems), problems

    nonzero = numpy_helper.from_array(np.array(3, np.int8), "x_zero_3")
    problems = parser_check.unsupported_ops(_qdq_matmul(tmp_path, zero=nonzero))
    assert any("QuantizeLinear (q): zero point 'x_zero_3' is not zero" in p for p in problems), problems

    problems = parser_check.unsupported_ops(_qdq_matmul(tmp_path, act_scale=-0.05))
    assert any("coefficients <= 0" in p for p in problems), problems

    problems = parser_check.unsupported_ops(_qdq_matmul(tmp_path, weight_scale=np.full(5, 0.1, np.float32)))
    assert any("5 scales for axis 1 of 'w_q' with shape [4, 3]" in p for p in problems), problems


def test_per_channel_activations_and_int32_bias_are_flagged(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    inits = [
        numpy_helper.from_array(np.full(3, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.zeros(3, np.int8), "z"),
        numpy_helper.from_array(np.arange(3, dtype=np.int32), "b_q"),
        numpy_helper.from_array(np.full(3, 0.01, np.float32), "b_s"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], axis=1, name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=1, name="dq"),
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], axis=0, name="bias_dq"),  # ORT's QuantizeBias
        helper.make_node("Add", ["xd", "b"], ["y"], name="add"),
    ]
    problems = parser_check.unsupported_ops(_save(tmp_path, nodes, [x], [y], inits))
    assert any(p.startswith("QuantizeLinear (q): per-channel scale on 'x'") for p in problems), problems
    assert any(p.startswith("DequantizeLinear (bias_dq): int32 input 'b_q'") for p in problems), problems


def test_op_check_still_flags_unsupported_graphs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8, name="to_u8"),  # a uint8 tensor inside
        helper.make_node("Cast", ["u"], ["f"], to=TensorProto.FLOAT, name="from_u8"),
        helper.make_node("Hardmax", ["f"], ["h"], name="hardmax"),  # no TensorRT importer ("N" in the matrix)
        helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape"),
    ]
    shape = numpy_helper.from_array(np.array([1, 4], np.float32), "shape")  # float shape input
    problems = parser_check.unsupported_ops(_save(tmp_path, nodes, [x], [y], [shape]))
    assert any(p.startswith("Cast (to_u8): uint8 output 'u' inside the network") for p in problems), problems
    assert any(p.startswith("Cast (from_u8): uint8 input 'u'") for p in problems), problems
    assert any(p.startswith("Hardmax (hardmax): not in TensorRT") for p in problems), problems
    assert any(p.startswith("Reshape (reshape): index input 'shape' is float32") for p in problems), problems


def test_uint8_network_input_into_cast_is_fine(tmp_path):
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    path = _save(tmp_path, [helper.make_node("Cast", ["image"], ["y"], to=TensorProto.FLOAT, name="c")], [x], [y])
    assert parser_check.unsupported_ops(path) == []


# --------------------------------------------------------------------------------------------
# One precision policy: source graph and network flags per TensorRT major
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10.0.1", "10.11.0", "10.13.3", "10.16.0", "11.0.0", "11.1.0"])
def test_source_graph_is_the_same_on_every_major(version):
    assert plan.plan_source(version, ["fp32", "fp16"]) == ("model.fp16.onnx", "fp16")
    assert plan.plan_source(version, ["fp32"]) == ("model.onnx", "fp32")  # --precision fp32, or the FP16 graph dropped
    assert plan.plan_source(version, ["fp32", "fp16", "int8"], int8=True) == ("model.int8.onnx", "int8")
    assert plan.plan_source(version, ["fp32", "int8"]) == ("model.onnx", "fp32")  # INT8 only when asked for


def test_old_tensorrt_and_network_flags():
    with pytest.raises(ClipadError, match="TensorRT 8.6.1 is too old.*TensorRT 10 or newer"):
        plan.plan_source("8.6.1", ["fp32", "fp16"])
    # kSTRONGLY_TYPED is 1 in TensorRT 10 (bit 1); in 11 it is 0, deprecated and ignored: no flag.
    assert plan.network_flags("10.13.0", 1) == 2
    assert plan.network_flags("11.1.0", 0) == 0


def test_no_precision_builder_flag_anywhere():
    # The only builder flag touched is TF32, and only to clear it.
    source = "".join(inspect.getsource(m) for m in (build, plan, inspector, parser_check))
    assert "set_flag(" not in source
    assert re.findall(r"\w+\(trt\.BuilderFlag\.\w+\)", source) == ["clear_flag(trt.BuilderFlag.TF32)"]


# --------------------------------------------------------------------------------------------
# Opt batch, the sidecar profile, and the plan checks the backend runs at load
# --------------------------------------------------------------------------------------------


def test_opt_batch_default_and_validation():
    assert [plan.default_opt_batch(m) for m in (1, 4, 8, 32)] == [1, 4, 8, 8]
    assert plan.check_opt_batch(None, 32) == 8 and plan.check_opt_batch(3, 4) == 3 and plan.check_opt_batch(4, 4) == 4
    for bad in (0, 5, True):
        with pytest.raises(ClipadError, match=r"--opt-batch must be between 1 and the max batch \(4\)"):
            plan.check_opt_batch(bad, 4)


def test_opt_batch_options_of_export(calibrated, tmp_path, capsys):
    tiny = ["--model", "clipad-tiny", "--random-weights", "--quiet"]
    code, _, err = run(capsys, "export", "--category", "washer", *tiny, "--opt-batch", "2", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "--opt-batch", "add --engine")
    code, _, err = run(
        capsys,
        "export",
        "--category",
        "washer",
        *tiny,
        "--engine",
        "--max-batch",
        "4",
        "--opt-batch",
        "9",
        "--out",
        tmp_path / "y",
    )
    assert_one_line_error(code, err, "--opt-batch must be between 1 and the max batch (4), got 9")
    code, _, err = run(
        capsys,
        "export",
        "--category",
        "washer",
        "--engine",
        "--precision",
        "int8",
        "--opt-batch",
        "5",
        "--out",
        calibrated,
    )  # the INT8 build checks against the artifacts' max batch, before TensorRT
    assert_one_line_error(code, err, "--opt-batch must be between 1 and the max batch (4), got 5")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


GPU = {"gpu": "NVIDIA L4", "compute_capability": "8.9"}


@pytest.fixture
def sidecar(calibrated, tmp_path):
    """The sidecar build_engine writes for an FP16 plan of the calibrated artifacts (the build needs TensorRT)."""
    art = load_artifacts(calibrated)
    src = "model.fp16.onnx" if art.has("model.fp16.onnx") else "model.onnx"
    meta = build.sidecar(
        art.manifest,
        calibrated / src,
        "fp16",
        plan.default_opt_batch(art.manifest.max_batch),
        "10.13.0",
        GPU,
        {"fp16": 90, "fp32": 30},
        12.3,
    )
    meta.write(tmp_path / PLAN_META)
    return art, EngineMeta.read(tmp_path / PLAN_META)


def test_sidecar_records_the_profile_and_passes_the_checks(sidecar, tmp_path):
    art, meta = sidecar
    data = json.loads((tmp_path / PLAN_META).read_text())
    assert data["profile"] == {"min": 1, "opt": 4, "max": 4} and data["strongly_typed"] is True
    assert data["input"] == {"name": "image", "dtype": "uint8", "shape": ["batch", 96, 96, 3]}
    assert data["fp16_layer_fraction"] == 0.75
    assert plan.profile_shapes(meta) == {"min": (1, 96, 96, 3), "opt": (4, 96, 96, 3), "max": (4, 96, 96, 3)}
    plan.check_plan(meta, art.manifest, "10.13.0", GPU)


def test_plans_for_other_shapes_or_graphs_are_refused(sidecar):
    art, meta = sidecar
    m = art.manifest
    bigger = meta.replace(profile={"min": 1, "opt": 8, "max": 8})
    with pytest.raises(
        ClipadError,
        match=r"model.plan was built for other shapes: batch 1..8 \(opt 8\), the artifacts serve batch 1..4; rebuild",
    ):
        plan.check_plan_shapes(bigger, m)
    other_size = meta.replace(input={"name": "image", "dtype": "uint8", "shape": ["batch", 240, 240, 3]})
    with pytest.raises(ClipadError, match="input shape batchx240x240x3, the artifacts' is batchx96x96x3"):
        plan.check_plan_shapes(other_size, m)
    with pytest.raises(ClipadError, match=r"input pixels \(uint8\), the graph's is image \(uint8\) \(and 1 more\)"):
        plan.check_plan_shapes(
            other_size.replace(input={"name": "pixels", "dtype": "uint8", "shape": ["batch", 240, 240, 3]}), m
        )
    with pytest.raises(
        ClipadError, match="model.plan is stale: model.onnx has changed since the plan was built from it"
    ):
        plan.check_plan_source(meta.replace(onnx="model.onnx", onnx_sha256="0" * 64), m)
    with pytest.raises(ClipadError, match="built with TensorRT 10.13.0 on NVIDIA L4"):
        plan.check_plan(meta, m, "11.1.0", GPU)


def test_sidecars_from_before_the_opt_batch_still_load(sidecar, tmp_path):
    art, meta = sidecar
    old = copy.deepcopy(meta.model_dump())
    old.update(profile={"min": 1, "opt": 1, "max": 4}, strongly_typed=False)  # a TensorRT 10 FP16-flag plan
    del old["tf32"]  # written before TF32 was cleared and recorded
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = EngineMeta.read(tmp_path / "old.json")
    assert loaded.profile.opt == 1 and loaded.tf32 is None
    assert "tf32" not in loaded.model_dump()  # rewritten as it was read
    plan.check_plan_shapes(loaded, art.manifest)  # its shapes still fit; only its tuning batch differs


def test_restrictions_of_the_mask_and_score_operators(tmp_path):
    """The matrix's restrictions (onnx-tensorrt 10.1-GA): TopK's K a build-time constant below
    3840 and sorted; EyeLike of static dimensions (one made from a computed shape is what
    AnomalyDINO's mask exported before its identity became a constant); MaxPool 1-D to 3-D with
    unit dilations; a reduction's axes an initializer. The allowed forms pass."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    k_ok = numpy_helper.from_array(np.array([2], np.int64), "k_ok")
    k_big = numpy_helper.from_array(np.array([4000], np.int64), "k_big")

    def problems(nodes, inits=(), rank=2):
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
        return parser_check.unsupported_ops(_save(tmp_path, nodes, [x], [y], [k_ok, k_big, *inits]))

    assert problems([helper.make_node("TopK", ["x", "k_ok"], ["y", "i"], axis=1, name="t")]) == []
    found = problems([helper.make_node("TopK", ["x", "k_big"], ["y", "i"], axis=1, name="t")])
    assert found == ["TopK (t): K 4000: TensorRT takes K < 3840"]
    found = problems([helper.make_node("TopK", ["x", "k_ok"], ["y", "i"], axis=1, sorted=0, name="t")])
    assert found == ["TopK (t): sorted 0: TensorRT needs sorted 1"]
    dynamic_k = [
        helper.make_node("Shape", ["x"], ["s"], start=1, name="shape"),
        helper.make_node("TopK", ["x", "s"], ["y", "i"], axis=1, name="t"),
    ]
    assert problems(dynamic_k) == ["TopK (t): K 's' is not a build-time constant"]

    computed_eye = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("ConstantOfShape", ["s"], ["z"], name="fill"),
        helper.make_node("EyeLike", ["z"], ["y"], name="eye"),
    ]
    assert problems(computed_eye) == [
        "EyeLike (eye): input 'z' has dimensions [None, None]: TensorRT needs them static (rank 2)"
    ]

    pool = [helper.make_node("Unsqueeze", ["x", "one"], ["u"], name="u")]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    assert problems([*pool, helper.make_node("MaxPool", ["u"], ["y"], kernel_shape=[3], pads=[1, 1])], [one], 3) == []
    dilated = helper.make_node("MaxPool", ["u"], ["y"], kernel_shape=[3], pads=[2, 2], dilations=[2], name="p")
    assert problems([*pool, dilated], [one], 3) == ["MaxPool (p): dilations [2]: TensorRT needs all ones"]

    axes_from_shape = [
        helper.make_node("Shape", ["x"], ["s"], start=1, name="shape"),
        helper.make_node("ReduceSum", ["x", "s"], ["y"], name="r"),
    ]
    assert problems(axes_from_shape) == ["ReduceSum (r): axes 's' is not a build-time constant"]
