"""Real-time streaming: decode → preprocess → batched inference → overlay → encode (docs/architecture.md,
"Stream pipeline").

Public entry point: :func:`run_stream` (``rtseg stream`` and ``rtseg bench`` call it), returning a
:class:`StreamReport` (``report.table()`` for printing, ``report.to_dict()`` for JSON).
"""

from .metrics import Latency, SourceReport, StreamReport
from .pipeline import run_stream
from .sinks import make_sink
from .sources import open_source

__all__ = ["Latency", "SourceReport", "StreamReport", "make_sink", "open_source", "run_stream"]
