"""Calibration: fixed per-category constants that make the fusion inductive, thresholds for
pass/fail and masks, and the static INT8 graph.

- ``thresholds``: the threshold rules (target false-positive rate on good images; F1-optimal
  with labelled anomalies) and the normalised score;
- ``constants``: the constants as the manifest stores them, read back by the runtime, which
  refuses constants made for another model;
- ``calibrate``: runs an exported model over calibration images and writes the constants;
- ``int8``: ``model.int8.onnx`` by static QDQ quantisation with calibration images.
"""
