"""``rtseg import-onnx`` and ``rtseg import-torch``: a model folder from any segmentation ONNX or
PyTorch module (click commands over :mod:`rtseg.byom`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..byom import ImportOptions

_META_HELP = ("Metadata file (YAML/JSON): name, task (binary|multiclass), classes, input {size [H, W], layout NCHW|NHWC, "
              "mean, std, resize}, output {kind logits|probabilities|indices, layout, stride, name}, data {root, format}.")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _summary(folder: Path) -> None:
    import json

    mj = json.loads((folder / "model.json").read_text())
    src = mj.get("source", {})
    h, w = mj["input_size"]
    click.echo(f"{folder}  {mj['model']}  {mj['task']} C={mj['num_classes']}  {w}x{h}  batch {src.get('batch')}  "
               f"{src.get('params', 0):,} params  edits: {', '.join(src.get('edits') or []) or 'none'}  "
               f"checked: {', '.join(src.get('checked_backends') or [])}")


def _backends(no_openvino: bool) -> tuple[str, ...]:
    return ("onnxruntime",) if no_openvino else ("onnxruntime", "openvino")


@click.command("import-onnx")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--meta", "meta", required=True, type=click.Path(path_type=Path), help=_META_HELP)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model folder to write (model.onnx + model.json).")
@click.option("--no-openvino-check", is_flag=True, help="Check the graph with ONNX Runtime only (not OpenVINO's reader).")
def import_onnx_command(onnx_file, meta, out, no_openvino_check) -> None:
    """Turn a segmentation ONNX plus a metadata file into a model folder that build-engine, eval, stream
    and bench accept in place of a checkpoint.

    NHWC inputs/outputs, probabilities, class indices and outputs at a stride are edited into rtseg's
    contract (NCHW float input, logits float32[N, C, H, W]); anything else is refused with one line.

    Example: rtseg import-onnx unet.onnx --meta unet.yaml --out models/unet
    """
    from ..byom import ImportOptions, import_onnx

    folder = import_onnx(onnx_file, meta, out, ImportOptions(backends=_backends(no_openvino_check)), log=_log)
    _summary(folder)


@click.command("import-torch")
@click.argument("factory")
@click.option("--meta", "meta", required=True, type=click.Path(path_type=Path), help=_META_HELP)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model folder to write (model.onnx + model.json).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Optional state_dict (.safetensors, or .pt/.pth loaded with weights_only) loaded into the module.")
@click.option("--opset", type=int, default=ImportOptions.opset, show_default=True, help="ONNX opset of the export.")
@click.option("--no-openvino-check", is_flag=True, help="Check the graph with ONNX Runtime only (not OpenVINO's reader).")
def import_torch_command(factory, meta, out, weights, opset, no_openvino_check) -> None:
    """Export the nn.Module that FACTORY ('module.path:function' or 'module.path:attribute') gives through
    rtseg's checked ONNX export and write a model folder.

    Example: rtseg import-torch mypkg.models:build_unet --weights unet.safetensors --meta unet.yaml --out models/unet
    """
    from ..byom import ImportOptions, export_model, load_factory, load_state

    module = load_factory(factory)
    if weights is not None:
        load_state(module, weights)
    folder = export_model(module, meta, out, ImportOptions(backends=_backends(no_openvino_check), opset=opset), log=_log)
    _summary(folder)
