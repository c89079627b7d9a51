"""The click commands of the ``rtseg`` CLI, one module per command group (imported lazily by
:mod:`rtseg.cli`).

Commands parse options into the library's option objects and call the library; nothing outside
this package imports it (library code never depends on command code).
"""
