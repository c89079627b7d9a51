"""Option types shared by the commands, derived from the library's tables (never typed again here)."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and ±infinity (click's range check lets NaN through:
    every comparison with it is false). With no bounds it is a finite ``float``."""

    name = "float"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v is not None and not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


#: ``type=`` of a float option without bounds
FINITE_FLOAT = FiniteFloatRange()


def backend_choice() -> click.Choice:
    """``--backend`` choices: the registered backends (:func:`rtseg.runtime.backend_names`)."""
    from ..runtime import backend_names

    return click.Choice(backend_names())


def precision_choice(auto: bool = True) -> click.Choice:
    """``--precision`` choices: every precision a registered backend builds, plus ``auto``."""
    from ..runtime import all_precisions

    return click.Choice([*all_precisions(), *(["auto"] if auto else [])])


def _shipped_decision() -> dict:
    """The shipped default model's ``decision`` record (for the help texts; ``{}`` if unreadable)."""
    import json

    from ..defaults import default_model_dir

    try:
        return json.loads((default_model_dir() / "model.json").read_text()).get("decision") or {}
    except (OSError, ValueError):
        return {}


def decision_options(video: bool = True):
    """The decision-layer flags (:mod:`rtseg.decision`) of ``stream`` and ``eval``: ``--raw``,
    ``--presence-threshold``, ``--presence-min-area`` and, with ``video``, ``--persist``/``--hold``.
    The help texts state the shipped model's calibrated values."""
    from ..decision import DEFAULT_HOLD_FRAMES, DEFAULT_ON_FRAMES, MAX_PERSIST_FRAMES

    dec = _shipped_decision()
    pres, per = dec.get("presence") or {}, dec.get("persistence") or {}
    opts = [
        click.option("--raw", is_flag=True,
                     help="Show/score the network's own mask (logit > 0) on every frame: no presence decision"
                          + (", no persistence." if video else ".")),
        click.option("--presence-threshold", "presence_threshold", default=None, type=FINITE_FLOAT,
                     help="A frame shows a detection only if its peak logit reaches this (binary models; default: "
                          f"the model's calibrated decision.presence — shipped model {pres.get('min_peak', '-')} — "
                          "else 0)."),
        click.option("--presence-min-area", "presence_min_area", default=None, type=click.IntRange(min=0),
                     help="… and at least this many pixels at network size have logit > 0 (default: the model's — "
                          f"shipped model {pres.get('min_area', '-')} — else 1)."),
    ]
    if video:
        opts += [
            click.option("--persist", default=None, type=click.IntRange(1, MAX_PERSIST_FRAMES),
                         help="Show a detection once it has lasted N consecutive frames of its source (default: the "
                              f"model's decision.persistence, chosen on its validation sequences — shipped model "
                              f"{per.get('on_frames', '-')} — else {DEFAULT_ON_FRAMES}; 1 = at once)."),
            click.option("--hold", default=None, type=click.IntRange(0, MAX_PERSIST_FRAMES),
                         help="Keep showing a detection M frames after it ends (default: the model's — shipped model "
                              f"{per.get('hold_frames', '-')} — else {DEFAULT_HOLD_FRAMES}; 0 = none)."),
        ]

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return wrap
