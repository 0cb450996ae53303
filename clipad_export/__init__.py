"""clipad: CLIP-AD zero-shot anomaly detection, from the PyTorch reference to the factory line.

The distribution installs one import package, ``clipad``, laid out in layers that import only
downwards (a test reads every import and enforces it):

- ``clipad.core``, ``clipad.model``, ``clipad.data``, ``clipad.evaluation``, ``clipad.training``,
  ``clipad.deploy``: the reference and everything that makes artifacts (repository folder
  ``clipad_export/``);
- ``clipad.calibration``: constants and thresholds fixed from calibration images (``calibration/``);
- ``clipad.runtime``: backends, sources, the frame pipeline, sinks, the viewer, bench (``runtime/``);
- ``clipad.cli``: the ``clipad`` command (``cli.py``).

Every computation follows ``docs/method.md``; docstrings cite its sections.
"""

__version__ = "0.1.0"
