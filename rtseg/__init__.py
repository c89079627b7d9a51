"""rtseg — real-time semantic segmentation: train → ONNX → INT8 Q/DQ → engine → stream."""

__version__ = "0.1.0"
