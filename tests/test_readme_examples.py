"""The README's "Bring your own model / Python API" examples run as written (python blocks with exec,
bash lines through the CLI), in a temporary folder, on the real data."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from rtseg.cli import main

SECTION = "## Bring your own model / Python API"


def _blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_readme_section_has_python_and_bash_examples():
    kinds = [k for k, _ in _blocks()]
    assert "python" in kinds and "bash" in kinds


def test_readme_examples_run(tmp_path, monkeypatch, shared_data, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTSEG_SHARED_DATA", str(shared_data))
    for kind, code in _blocks():
        if kind == "python":
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            continue
        for line in code.splitlines():
            args = shlex.split(line.replace("../shared/data", str(shared_data)), comments=True)
            if not args:
                continue
            assert args[0] == "rtseg"
            with pytest.raises(SystemExit) as e:
                main(args[1:])
                raise SystemExit(0)
            assert e.value.code == 0, (line, capsys.readouterr().err[-2000:])
    out = capsys.readouterr().out
    assert "25 frames," in out and "Dice" in out
    assert (tmp_path / "overlay.mp4").stat().st_size > 0 and (tmp_path / "bench.png").stat().st_size > 0
    assert (tmp_path / "models" / "my-unet-onnx" / "model.json").is_file()
