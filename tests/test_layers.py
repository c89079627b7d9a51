"""The layer rule of docs/architecture.md, checked over the import statements (``ast``) of every module.

A module may import from its own layer and the layers below it, never from a layer above. Lazy imports
inside functions count: a lazy upward import is still an upward import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rtseg"

#: Layer of each top-level module or sub-package of ``rtseg`` (higher number = higher layer);
#: the same table as docs/architecture.md "Layers".
LAYERS = {
    "commands": 2, "cli": 2, "__main__": 2,
    "api": 1, "training": 1, "export": 1, "calib": 1, "gate": 1, "byom": 1, "stream": 1, "bench": 1,
    "evaluation": 1, "video_eval": 1, "decision_tuning": 1, "defaults": 1,
    "models": 0, "runtime": 0, "data": 0, "meta": 0, "checkpoint": 0, "metrics": 0,
    "decision": 0, "timing": 0, "errors": 0, "safe_io": 0, "onnx_files": 0, "limits": 0, "fields": 0,
}
NAMES = {2: "commands", 1: "library", 0: "foundation"}


def _module_name(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of an ``rtseg`` module in ``path``."""
    mod = _module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "rtseg"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rtseg":
                continue
            if target == "rtseg":  # from rtseg import x / from . import x (in the top package)
                found += [(node.lineno, f"rtseg.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def _layer(dotted: str) -> int | None:
    parts = dotted.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops - set(LAYERS) == set(), "add the new module to LAYERS and to docs/architecture.md"
    assert set(LAYERS) - tops == set(), "a module in LAYERS no longer exists"


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """``path:line (layer) imports module (higher layer)`` for every import that breaks the rule."""
    broken = []
    for path in sorted(root.rglob("*.py")):
        own = _layer(".".join(_module_name(path, root)))
        if own is None:  # rtseg/__init__.py: the lazy public namespace (rtseg.load, rtseg.build_engine, ...)
            continue
        for line, target in _imported(path, root):
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                broken.append(f"{path.relative_to(root.parent)}:{line} ({NAMES[own]}) imports {target} "
                              f"({NAMES[theirs]})")
    return broken


def test_no_upward_import():
    assert upward_imports() == []


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: lazy, relative and absolute upward imports are all reported."""
    fake = tmp_path / "rtseg"
    (fake / "runtime" / "tensorrt").mkdir(parents=True)
    (fake / "runtime" / "tensorrt" / "build.py").write_text("def f():\n    from ...export import build\n")
    (fake / "meta.py").write_text("import rtseg.commands.stream\nfrom . import errors\n")
    (fake / "stream.py").write_text("from .runtime import load_engine\nfrom rtseg import cli\n")
    assert upward_imports(fake) == [
        "rtseg/meta.py:1 (foundation) imports rtseg.commands.stream (commands)",
        "rtseg/runtime/tensorrt/build.py:2 (foundation) imports rtseg.export (library)",
        "rtseg/stream.py:2 (library) imports rtseg.cli (commands)",
    ]


def test_architecture_doc_lists_every_layer():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for name in LAYERS:
        if name in ("__main__", "cli", "commands"):
            continue
        shown = f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py"
        assert shown in doc.split("## Layers")[1].split("```")[1], f"docs/architecture.md Layers lacks {shown}"


@pytest.mark.parametrize("path", ["runtime/tensorrt/backend.py", "runtime/tensorrt/build.py",
                                  "runtime/tensorrt/onnx_check.py", "runtime/tensorrt/cache.py"])
def test_tensorrt_lives_in_one_folder(path):
    assert (PACKAGE / path).is_file()
    assert not [p for p in PACKAGE.rglob("*.py") if "tensorrt" in p.stem and p.parent.name != "tensorrt"]


def test_ruff_check_passes():
    """The lint configuration in pyproject.toml ([tool.ruff]) holds for the package, the tests and the scripts."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ruff", "check", "rtseg", "tests", "scripts"], cwd=PACKAGE.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
