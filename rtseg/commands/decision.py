"""``rtseg calibrate-decision``: choose a binary model's presence rule and persistence on validation data
(click command over :mod:`rtseg.decision_tuning`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..decision_tuning import DecisionCalibOptions
from ..errors import RtsegError
from ..safe_io import nan_to_none, write_error, write_json
from .common import FiniteFloatRange


@click.command("calibrate-decision")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint or model folder (its model.json gets the decision record).")
@click.option("--data", "data", multiple=True, type=click.Path(),
              help="Folder whose val split is used (repeatable; default: the model's training folders).")
@click.option("--max-false-rate", default=DecisionCalibOptions.max_false_rate, show_default=True, type=FiniteFloatRange(0, 1),
              help="Largest share of polyp-free validation images the presence rule may show something on.")
@click.option("--max-delay-s", default=DecisionCalibOptions.max_delay_s, show_default=True, type=FiniteFloatRange(min=0),
              help="Largest detection delay persistence may cause on a validation sequence (s).")
@click.option("--fps", default=DecisionCalibOptions.fps, show_default=True, type=FiniteFloatRange(min=0.1),
              help="Frame rate the validation sequences are replayed at.")
@click.option("--batch-size", default=DecisionCalibOptions.batch_size, show_default=True, type=click.IntRange(1, 256))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Inference threads.")
@click.option("--dry-run", is_flag=True, help="Print the choice; do not write model.json.")
@click.option("--out", "out_json", default=None, type=click.Path(dir_okay=False),
              help="Also write the full record with every candidate's scores to this JSON file.")
def calibrate_decision_command(checkpoint, data, max_false_rate, max_delay_s, fps, batch_size, threads, dry_run, out_json):
    """Measure every presence rule (peak logit × area) and persistence (N shown-after × M held) of a
    binary model on the validation parts of its data, print the chosen ones, and record them in the
    model's model.json 'decision' (stream and eval apply them; rebuild engines to carry them).
    """
    from ..checkpoint import META, load_meta, resolve_checkpoint
    from ..decision_tuning import DecisionCalibOptions, calibrate_decision
    from ..runtime import load_engine

    folder = resolve_checkpoint(checkpoint)
    meta = load_meta(folder)
    backend = load_engine(folder, num_threads=threads)
    opts = DecisionCalibOptions(max_false_rate=max_false_rate, max_delay_s=max_delay_s, fps=fps, batch_size=batch_size)
    rec = calibrate_decision(backend, meta.to_dict(), list(data) or None, opts)
    tables = rec.pop("_tables")
    _print(rec)
    if out_json:
        if Path(out_json).resolve() == (folder / META).resolve():
            raise RtsegError(f"--out {out_json} is the model's own {META}; pass another file")
        try:
            write_json(out_json, nan_to_none(rec | {"tables": tables}))
        except OSError as e:
            raise write_error(out_json, e, "--out") from None
    if not dry_run:
        meta.decision = nan_to_none(rec)
        try:
            write_json(folder / META, meta.to_dict())
        except OSError as e:
            raise write_error(folder / META, e, "model.json") from None
        click.echo(f"written: {folder / META} decision")


def _print(rec: dict) -> None:
    c = rec["calibration"]
    ch, raw, per, off = c["presence_chosen"], c["presence_raw"], c["persistence_chosen"], c["persistence_off"]
    click.echo(f"validation data: {', '.join(c['data'])}")
    for name, r in (("raw (logit > 0)", raw), ("chosen", ch)):
        click.echo(f"  presence {name}: peak ≥ {r['min_peak']:g}, ≥ {r['min_area']} px: Dice {r['dice']:.4f} "
                   f"(object images {r['dice_object']:.4f}); false detections {r['false_detections']}/{r['object_free']}, "
                   f"misses {r['misses']}/{r['object_images']}")
    click.echo(f"  sequences: {c['sequences']['count']} ({c['sequences']['frames']} frames)")
    for name, r in (("off (1/0)", off), ("chosen", per)):
        if r:
            click.echo(f"  persistence {name}: shown after {r['on_frames']}, held {r['hold_frames']}: frame errors "
                       f"{r['errors']} (false {r['false_frames']}/{r['object_free_frames']}, missed "
                       f"{r['missed_frames']}/{r['object_frames']}), false-alarm activations {r['false_alarm_activations']}, "
                       f"max delay {r['max_delay_s']:.2f} s")
    click.echo(json.dumps({"presence": rec["presence"], "persistence": rec["persistence"]}))
