"""INT8 calibration: FP32 ONNX + real images → one Q/DQ ONNX for every backend (issue 5).

Each module owns one step and its names; import from the module (this package re-exports nothing):

* :mod:`rtseg.calib.images` — calibration source, deterministic image selection, the runtime's
  preprocessing;
* :mod:`rtseg.calib.ranges` — activation ranges (``minmax``, ``percentile``, ``entropy``);
* :mod:`rtseg.calib.qdq` — the Q/DQ ONNX and its scheme;
* :mod:`rtseg.calib.record` — the calibration folder's files and its record (``calib.json``);
* :mod:`rtseg.calib.calibrate` — the steps run in order (``calibrate_checkpoint``, ``calibrate_onnx``).

The TensorRT ≤ 10 calibration cache is TensorRT's file: :mod:`rtseg.runtime.tensorrt.cache`.
"""
