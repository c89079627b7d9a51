"""The model contract (docs/networks.md, "Model contract"), checked for every entry of ``list_models()``.

Each entry is built tiny from the test configuration registered next to it (``model_test_config``).
The ``check_*`` functions are shared with tests/models/test_extending_network.py, which runs them on a network
defined outside the package, the way the "add a network" recipe describes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtseg.models import SegModel, count_parameters, create_model, list_models, model_test_config

# Trainable parameters of the full-size published variants (docs/networks.md "Parameters and compute"):
# (registry name, C, extra kwargs, count). ContraFusionNet counts its deployed part (no contrastive branch).
PUBLISHED_COUNTS = [
    ("eunet", 1, {}, 4_564_511),
    ("eunet-s", 1, {}, 1_196_831),
    ("visionfusenet-effv2b3", 1, {}, 17_027_295),
    ("visionfusenet", 1, {}, 17_027_295),
    ("visionfusenet-densenet121", 1, {}, 18_483_777),
    ("visionfusenet-lite0-rt", 1, {}, 1_358_609),
    ("visionfusenet-lite1-rt", 1, {}, 1_647_121),  # rtseg's own variants: the counts in docs/networks.md
    ("visionfusenet-lite2-rt", 1, {}, 1_840_641),
    ("contrafusionnet", 20, {"contrastive": False}, 17_787_796),
    ("gmsrfnet", 1, {}, 47_043_853),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build_tiny(name: str, num_classes: int = 1) -> SegModel:
    """The registry entry ``name`` built with its test configuration."""
    return create_model(name, num_classes=num_classes, **model_test_config(name).kwargs)


def noise_input(size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """Gaussian noise ``float32[batch, 3, H, W]`` (a stand-in for normalised RGB)."""
    return torch.randn(batch, 3, *size)


def check_attributes(model: torch.nn.Module, size: tuple[int, int]) -> None:
    """The class attributes of the contract, and a test size the network accepts."""
    assert isinstance(model, SegModel)
    m = model.input_multiple
    assert isinstance(m, int) and m >= 1
    assert size[0] % m == 0 and size[1] % m == 0, f"test input_size {size} is not a multiple of {m}"
    assert model.output_activation in ("sigmoid", "softmax")
    for stats in (model.default_mean, model.default_std):
        assert len(stats) == 3 and all(0.0 < float(v) <= 1.0 for v in stats)


def check_eval_logits(model: SegModel, size: tuple[int, int], num_classes: int) -> None:
    """``eval()`` returns one logits tensor ``float32[N, C, H, W]`` at the input resolution, for the
    test size and for a non-square size one ``input_multiple`` wider."""
    model.eval()
    for hw in (size, (size[0], size[1] + model.input_multiple)):
        with torch.no_grad():
            y = model(noise_input(hw))
        assert isinstance(y, torch.Tensor), f"eval output is {type(y).__name__}, expected one tensor"
        assert tuple(y.shape) == (2, num_classes, *hw) and y.dtype == torch.float32
        assert torch.isfinite(y).all()


def check_bad_input(model: SegModel, size: tuple[int, int]) -> None:
    """A side that is not a multiple of ``input_multiple``, or C ≠ 3, raises a ``ValueError`` naming it."""
    model.eval()
    m = model.input_multiple
    if m > 1:
        odd = (size[0] + m // 2, size[1])
        with pytest.raises(ValueError, match=rf"multiples of {m}\b.*got {odd[0]}x{odd[1]}"):
            model(torch.randn(1, 3, *odd))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(1, 4, *size))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(3, *size))


def check_train_outputs(model: SegModel, size: tuple[int, int], num_classes: int) -> None:
    """``train()`` returns the logits, or a dict whose first entry ``"logits"`` holds them; the
    logits have the eval shape, every output reaches the loss and every parameter gets a gradient."""
    model.train()
    out = model(noise_input(size))
    if isinstance(out, dict):
        assert next(iter(out)) == "logits", f"train-mode dict starts with {next(iter(out))!r}"
        logits, aux = out["logits"], [v for k, v in out.items() if k != "logits"]
        assert aux, "a train-mode dict carries auxiliary outputs"
    else:
        assert isinstance(out, torch.Tensor), f"train output is {type(out).__name__}"
        logits, aux = out, []
    assert tuple(logits.shape) == (2, num_classes, *size) and logits.dtype == torch.float32
    assert logits.requires_grad
    loss = logits.square().mean() + sum(a.float().mean() for a in aux)  # not invariant to L2-normalising
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [], f"parameters outside the forward graph: {unused[:5]}"


def check_onnx_parity(model: SegModel, size: tuple[int, int], folder: Path) -> None:
    """The eval graph exports to ONNX with one ``logits`` output, a dynamic batch and ORT parity
    (``export_onnx`` raises ``RtsegError`` above its bound; the bound is re-checked here)."""
    import onnx

    from rtseg.export.onnx import export_onnx

    info = export_onnx(model, folder / "model.onnx", input_hw=size)
    assert info["max_abs_diff"] <= info["tolerance"]
    assert info["output"]["shape"][1:] == [model_num_classes(model), *size]
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert len(graph.output) == 1
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def model_num_classes(model: torch.nn.Module) -> int:
    """C of a model built by ``create_model`` (recorded as ``rtseg_num_classes``)."""
    return int(model.rtseg_num_classes)


@pytest.mark.parametrize("name", list_models())
def test_attributes_and_test_config(name):
    model = build_tiny(name)
    check_attributes(model, model_test_config(name).input_size)
    assert model.rtseg_name == name


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_eval_returns_logits_at_input_resolution(name, num_classes):
    check_eval_logits(build_tiny(name, num_classes), model_test_config(name).input_size, num_classes)


@pytest.mark.parametrize("name", list_models())
def test_bad_input_shape_raises_value_error(name):
    check_bad_input(build_tiny(name), model_test_config(name).input_size)


@pytest.mark.parametrize("name", list_models())
def test_train_mode_returns_main_logits_first(name):
    check_train_outputs(build_tiny(name, 2), model_test_config(name).input_size, 2)


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_parity(name, tmp_path):
    check_onnx_parity(build_tiny(name), model_test_config(name).input_size, tmp_path)


@pytest.mark.parametrize("name,num_classes,kwargs,expected", PUBLISHED_COUNTS, ids=[c[0] for c in PUBLISHED_COUNTS])
def test_published_parameter_counts(name, num_classes, kwargs, expected):
    with torch.device("meta"):  # counting only: no memory, no initialisation
        model = create_model(name, num_classes=num_classes, **kwargs)
    assert count_parameters(model) == expected


def test_every_entry_has_a_published_count():
    assert sorted(c[0] for c in PUBLISHED_COUNTS) == list_models()
