"""Making deployable artifacts: the artifact directory and its manifest, the ONNX graph and its
mixed FP16 twin, parity against the reference, TensorRT engines and a Triton repository."""
