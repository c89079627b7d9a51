"""Checkpoint → ONNX → engine folder (docs/architecture.md, issue 2 step 6, issue 5).

Each module owns one step; import from the module (this package re-exports nothing):

* :mod:`rtseg.export.onnx` — PyTorch module → ONNX (``export_onnx``: opset 17, dynamic batch, static
  H×W), checked with ``onnx.checker`` and against PyTorch with ONNX Runtime;
* :mod:`rtseg.export.build` — checkpoint → ``engines/<model>/<backend>-<precision>/`` (``build_engine``,
  ``build_auto`` for ``--precision auto``);
* :mod:`rtseg.export.triton` — an engine folder → a Triton model repository.

INT8 calibration (FP32 ONNX + real images → one Q/DQ ONNX) is :mod:`rtseg.calib`.
"""
