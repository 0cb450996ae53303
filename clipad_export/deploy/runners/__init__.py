"""Running a model file: uint8 [N, S, S, 3] in, (anomaly_map float32 [N, S, S], image_prob float32 [N])
out, in batches. One runner per engine (``base.Runner``): ONNX Runtime (``onnxruntime``), OpenVINO
(``openvino``), a TensorRT plan (``tensorrt``, with cuda-python in ``cuda``). Export parity, the
quality gates, INT8 calibration and every runtime backend run graphs through these; nothing else
opens a session. torch-free."""
