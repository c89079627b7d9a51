"""Real-time streaming: decode → preprocess → batched inference → overlay → encode (docs/architecture.md,
"Stream pipeline").

Public entry points: :func:`run_stream` (``rtseg stream`` and ``rtseg bench`` call it) and the
:class:`StreamPipeline` class behind it, configured by :class:`StreamOptions`, returning a
:class:`StreamReport` (``report.table()`` for printing, ``report.to_dict()`` for JSON).
New inputs and outputs subclass :class:`Source` and :class:`Sink`.
"""

from .metrics import Latency, SourceReport, StreamReport
from .pipeline import StreamOptions, StreamPipeline, run_stream
from .sinks import Sink, make_sink
from .sources import Source, SourceSpecError, open_source

__all__ = ["Latency", "Sink", "Source", "SourceReport", "SourceSpecError", "StreamOptions", "StreamPipeline",
           "StreamReport", "make_sink", "open_source", "run_stream"]
