"""Names and defaults shared by the INT8 calibration modules (no imports: every calibration module
imports from here, so none of them has to import another one for a constant).

* :data:`QUANT_OP_TYPES`: the compute ops that get Q/DQ pairs on their inputs (Conv, ConvTranspose,
  MatMul, Gemm); every other op stays float.
* :data:`METHODS`: the activation-range estimators (``minmax``, ``entropy``, ``percentile``);
  ``entropy`` (TensorRT's KL calibration) is the default.
* The files of a calibration folder: ``model.onnx`` (FP32), ``model.qdq.onnx`` (INT8 Q/DQ),
  ``calib.json`` (record, format ``rtseg-calib/1``), ``calib.cache`` (TensorRT ≤ 10).
"""

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_NUM_IMAGES = 100
DEFAULT_PERCENTILE = 99.999
DEFAULT_WEIGHT_BITS = 8
ENTROPY_BINS = 2048  # |x| histogram bins (TensorRT's entropy calibrator: 2048 bins, 128 int8 levels)
QUANT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CALIB_FORMAT = "rtseg-calib/1"
CALIB_JSON = "calib.json"
FP32_ONNX = "model.onnx"
QDQ_ONNX = "model.qdq.onnx"
TRT_CACHE = "calib.cache"
