"""TensorRT in one place, like OpenVINO and ONNX Runtime keep theirs in their runtime modules.

* :mod:`rtseg.runtime.tensorrt.backend` — the backend (``BackendSpec``: load, run, version/device checks);
* :mod:`rtseg.runtime.tensorrt.build` — the engine builder (optimization profile, FP16/INT8, timing cache);
* :mod:`rtseg.runtime.tensorrt.onnx_check` — what TensorRT's ONNX parser and explicit quantization accept;
* :mod:`rtseg.runtime.tensorrt.cache` — the TensorRT ≤ 10 calibration cache.

Importing this package does not import ``tensorrt``; the modules import it when they run.
"""
