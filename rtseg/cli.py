"""The ``rtseg`` command line: train, eval, export, calibrate, build-engine, calibrate-decision, stream, bench,
import-onnx, import-torch.

Every user error is an :class:`rtseg.errors.RtsegError`, printed as one line
(``error: <problem>; <fix>``) with exit status 2 — never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from .errors import RtsegError

# command name -> "module:attribute" of a click.Command; imported only when the command runs, so
# `rtseg --help` stays fast and a missing optional dependency only affects its own command.
_COMMANDS = {
    "train": ("rtseg.commands.train", "train", "Train a network on a labelled image folder."),
    "eval": ("rtseg.commands.eval", "eval_command", "Evaluate a checkpoint, model folder or engine (Dice, IoU, ... ; docs/networks.md §5)."),
    "export": ("rtseg.commands.export", "export_command", "Export a checkpoint to ONNX (dynamic batch), checked against PyTorch."),
    "calibrate": ("rtseg.commands.export", "calibrate_command", "Calibrate INT8: write a Q/DQ ONNX and its calibration record."),
    "build-engine": ("rtseg.commands.export", "build_engine_command", "Build an inference engine folder from a checkpoint or model folder."),
    "export-triton": ("rtseg.commands.export", "export_triton_command",
                      "Write a Triton Inference Server model repository from engine or checkpoint folders."),
    "calibrate-decision": ("rtseg.commands.decision", "calibrate_decision_command",
                           "Choose a binary model's presence rule and persistence on validation data (model.json)."),
    "stream": ("rtseg.commands.stream", "stream_command", "Segment a video/camera/network stream and write the overlaid output."),
    "bench": ("rtseg.commands.bench", "bench_command", "Benchmark an engine: latency, throughput, stream FPS."),
    "import-onnx": ("rtseg.commands.imports", "import_onnx_command",
                    "Make a model folder from any segmentation ONNX + a metadata file (accepted in place of a checkpoint)."),
    "import-torch": ("rtseg.commands.imports", "import_torch_command",
                     "Make a model folder from a PyTorch module ('module:factory') through the checked ONNX export."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:  # pragma: no cover - a broken install
            raise click.ClickException(f"command {name!r} is unavailable: {e}; reinstall rtseg with 'pip install -e .'")

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in _COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rtseg")
def cli() -> None:
    """rtseg — real-time semantic segmentation: train → ONNX → INT8 → engine → stream."""


def _usage_line(e: click.UsageError) -> str:
    """A click usage error (unknown option, value out of range, missing argument) as ``problem; fix``."""
    msg = " ".join(e.format_message().split()).rstrip(".")
    cmd = e.ctx.command_path if e.ctx is not None else "rtseg"
    return f"{msg}; see '{cmd} --help'"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Maps :class:`RtsegError` to one line on stderr and exit code 2.

    Results that cannot reach stdout are an error, not a silent exit 0: a closed stdout (``>&-``) is
    refused before the command runs, a full or broken one (``> /dev/full``) when it is flushed.
    """
    try:
        if sys.stdout is None:
            raise RtsegError("stdout is closed, so the results would be lost; run rtseg with stdout open "
                             "(e.g. > results.txt) or pass --out FILE where the command has it")
        try:
            cli.main(args=argv, standalone_mode=False)
        except OSError as e:
            if e.filename is not None or e.errno not in _STDOUT_ERRNOS:
                raise
            _stdout_failed(e)
        _flush_stdout()
    except RtsegError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        click.echo(f"error: {_usage_line(e)}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:  # numpy/PyTorch allocations past what the machine (or ulimit -v) allows
        _out_of_memory()
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):  # PyTorch's CPU allocator says it this way
            raise
        _out_of_memory()
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def _out_of_memory():
    click.echo("error: out of memory; pass a smaller --batch-size, --img-size or input, or free memory", err=True)
    sys.exit(2)


#: errors of a write to a full, broken or closed stdout (they carry no file name)
_STDOUT_ERRNOS = (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EBADF)


def _flush_stdout() -> None:
    """Flush stdout now, so that a full or broken one is one error line (exit 2) instead of Python's
    ``Exception ignored … OSError`` at interpreter exit."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        _stdout_failed(e)


def _stdout_failed(e: BaseException):
    """Raise the one-line error for results that could not be written to stdout (and stop further tries)."""
    reason = getattr(e, "strerror", None) or str(e)
    try:
        sys.stdout = open(os.devnull, "w")  # nothing more is tried at exit
    except OSError:
        pass
    raise RtsegError(f"cannot write the results to stdout ({reason}); redirect stdout to a file with room") from None
