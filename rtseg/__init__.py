"""rtseg — real-time semantic segmentation: train → ONNX → INT8 Q/DQ → engine → stream.

The Python API (imported lazily, so ``import rtseg`` and ``rtseg --help`` stay fast):

* :func:`load` → :class:`Segmenter` (``predict``, ``stream``, ``evaluate``) on an engine, a checkpoint,
  a model folder or the default model;
* :func:`import_onnx`, :func:`export_model` (:class:`ImportMeta`, :class:`ImportOptions`) — bring your
  own segmentation ONNX or PyTorch module as a model folder;
* :func:`build_engine` (:class:`BuildOptions`, :class:`GateOptions`), :func:`run_bench`
  (:class:`BenchOptions`), :func:`run_stream` (:class:`StreamOptions`), :func:`train` (:class:`TrainConfig`);
* :class:`RtsegError` — every user error (one line: the problem and the fix).
"""

__version__ = "0.1.0"

#: public name → module it lives in
_API = {
    "Segmenter": "rtseg.api", "load": "rtseg.api", "build_engine": "rtseg.api", "train": "rtseg.api",
    "ImportMeta": "rtseg.byom", "ImportOptions": "rtseg.byom", "import_onnx": "rtseg.byom", "export_model": "rtseg.byom",
    "BuildOptions": "rtseg.export.build", "GateOptions": "rtseg.gate.check",
    "StreamOptions": "rtseg.stream", "StreamReport": "rtseg.stream", "run_stream": "rtseg.stream",
    "BenchOptions": "rtseg.bench", "run_bench": "rtseg.bench",
    "TrainConfig": "rtseg.training.loop", "RtsegError": "rtseg.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'rtseg' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__():
    return __all__
