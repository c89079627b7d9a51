"""Option types shared by the commands, derived from the library's tables (never typed again here)."""

from __future__ import annotations

import click


def backend_choice() -> click.Choice:
    """``--backend`` choices: the registered backends (:func:`rtseg.runtime.backend_names`)."""
    from ..runtime import backend_names

    return click.Choice(backend_names())


def precision_choice(auto: bool = True) -> click.Choice:
    """``--precision`` choices: every precision a registered backend builds, plus ``auto``."""
    from ..runtime import all_precisions

    return click.Choice([*all_precisions(), *(["auto"] if auto else [])])
