"""The performance goals, evaluated on one bench run where both sides were measured."""

from __future__ import annotations


def _p50(rows: list[dict], backend: str, precision: str) -> float | None:
    """p50 latency (ms) of the ``backend``/``precision`` row at batch 1, None when it did not run."""
    for r in rows:
        if (r["backend"], r["precision"], r["batch"], r["status"]) == (backend, precision, 1, "ok"):
            return r["latency_ms"]["p50"]
    return None


def performance_goals(rows: list[dict], dual: list[dict]) -> list[dict]:
    """ONNX Runtime FP32 at most 0.75x torch FP32 and INT8 faster than FP32 (batch 1), and the
    dual path at most 1.25x the plain encoding; one dict each: goal, value, limit, met."""
    goals = []
    torch32, ort32, ort8 = _p50(rows, "torch", "fp32"), _p50(rows, "onnxruntime", "fp32"), _p50(rows, "onnxruntime", "int8")
    if torch32 and ort32:
        goals.append({"goal": "onnxruntime fp32 / torch fp32, batch 1", "value": ort32 / torch32, "limit": 0.75,
                      "met": ort32 / torch32 <= 0.75})
    if ort32 and ort8:
        goals.append({"goal": "onnxruntime int8 / onnxruntime fp32, batch 1", "value": ort8 / ort32, "limit": 1.0,
                      "met": ort8 / ort32 < 1.0})
    for d in dual:
        goals.append({"goal": f"dual path / plain encoding, {d['precision']} {d['device']}, batch {d['batch']}",
                      "value": d["ratio"], "limit": 1.25, "met": d["ratio"] <= 1.25})
    return goals
