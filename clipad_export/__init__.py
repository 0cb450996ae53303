"""clipad reference: CLIP-AD (RVS + SDP/SDP+) in PyTorch, data readers, metrics, evaluation.

Every computation follows `shared/docs/method.md` (what the official code computes); module
docstrings cite its sections. Later stages (ONNX export, runtime, calibration) call into this
package rather than re-implementing any step.
"""

__version__ = "0.1.0"
