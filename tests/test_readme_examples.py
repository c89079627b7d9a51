"""The README and the docs pages, checked against the code.

- The README's "Bring your own model / Python API" examples run as written (python blocks with exec,
  bash lines through the CLI), in a temporary folder, on the real data.
- Every ``rtseg ...`` command line in a ``bash`` block of README.md or docs/*.md parses against the real
  click command (known command, known options, each option's value present, no stray argument), and
  every inline ``rtseg <command> --option`` names options that command has; every ``--option`` written
  in backticks is an option of some rtseg command (or of a tool in ``OTHER_TOOLS_OPTIONS``).
- Every relative link in README.md and docs/*.md points at an existing file (and heading, for ``#anchors``).
- README.md stays short (at most 150 lines) and keeps its "## Set up" section with the two set-up
  commands that CI runs (``.ci/run`` → ``scripts/test.sh``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from conftest import REPO

from rtseg.cli import _COMMANDS, cli, main

SECTION = "## Bring your own model / Python API"
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 150

#: ``--options`` that docs mention for other tools (pip, torchrun, pytest), not rtseg's own.
OTHER_TOOLS_OPTIONS = {"--nproc_per_node"}


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def _blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


# -- the README's runnable examples --------------------------------------------------------------------

def test_readme_section_has_python_and_bash_examples():
    kinds = [k for k, _ in _blocks()]
    assert "python" in kinds and "bash" in kinds


@pytest.mark.slow
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


# -- README size and its set-up section ----------------------------------------------------------------

def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move reference text to docs/"


def test_readme_keeps_the_setup_commands():
    text = README.read_text()
    start = text.index("\n## Set up")
    section = text[start:text.index("\n## ", start + 1)]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands == ["bash scripts/main-job.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    for script in ("main-job.sh", "test.sh"):
        assert (REPO / "scripts" / script).is_file()


# -- command examples in README.md and docs/*.md -------------------------------------------------------

def _bash_lines(page: Path) -> list[str]:
    """The lines of a page's ``bash`` blocks, backslash continuations joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        lines += [ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def _rtseg_args(line: str) -> list[str] | None:
    """The arguments after ``rtseg`` (``rtseg ...``, ``python -m rtseg ...``, ``torchrun ... -m rtseg ...``)."""
    args = shlex.split(line, comments=True)
    if args[:1] == ["rtseg"]:
        return args[1:]
    for i in range(len(args) - 1):
        if args[i] == "-m" and args[i + 1] == "rtseg":
            return args[i + 2:]
    return None


def _command_examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in _bash_lines(page):
            if _rtseg_args(line) is not None:
                found.append((_rel(page), line))
    return found


def _command(name: str) -> click.Command:
    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, name)
    assert cmd is not None, f"'rtseg {name}' is not a command (commands: {', '.join(_COMMANDS)})"
    return cmd


def _option_names(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


EXAMPLES = _command_examples()


def test_docs_have_command_examples():
    pages = {page for page, _ in EXAMPLES}
    assert "README.md" in pages and len(EXAMPLES) >= 40, pages
    shown = {_rtseg_args(line)[0] for _, line in EXAMPLES}
    assert set(_COMMANDS) - shown <= {"import-torch"}, f"commands without an example: {set(_COMMANDS) - shown}"
    in_readme = {_rtseg_args(line)[0] for page, line in EXAMPLES if page == "README.md"}
    tour = {"train", "eval", "calibrate", "build-engine", "calibrate-decision", "stream", "bench", "import-onnx"}
    assert tour <= in_readme, f"README.md's tour lacks {tour - in_readme}"


@pytest.mark.parametrize(("page", "line"), EXAMPLES, ids=[f"{p}:{ln[:60]}" for p, ln in EXAMPLES])
def test_command_example_parses(page, line):
    args = _rtseg_args(line)
    assert args, (page, line)
    cmd = _command(args[0])
    ctx = click.Context(cmd, info_name=args[0], parent=click.Context(cli, info_name="rtseg"))
    parser = cmd.make_parser(ctx)
    try:
        _, leftover, _ = parser.parse_args(list(args[1:]))
    except click.UsageError as e:
        pytest.fail(f"{page}: {line!r}: {e.format_message()}")
    leftover = [a for a in leftover if a != "..."]  # "..." stands for the rest of the options
    arguments = [p.name for p in cmd.params if isinstance(p, click.Argument)]
    assert not leftover, f"{page}: {line!r}: stray arguments {leftover} ('rtseg {args[0]}' takes {arguments})"


def _code_spans(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return re.findall(r"`([^`\n]+)`", text)


def test_inline_command_options_exist():
    bad = []
    for page in PAGES:
        for span in _code_spans(page):
            m = re.match(r"rtseg ([a-z][a-z-]*)(.*)", span)
            if not m or m.group(1) not in _COMMANDS:
                continue
            known = _option_names(_command(m.group(1)))
            bad += [f"{_rel(page)}: `{span}`: {opt}" for opt in re.findall(r"(?<![\w-])--[a-z][\w-]*", m.group(2))
                    if opt not in known]
    assert not bad, "options not in the command's --help:\n" + "\n".join(bad)


def test_every_backticked_option_exists():
    known = set(OTHER_TOOLS_OPTIONS)
    for name in _COMMANDS:
        known |= _option_names(_command(name))
    bad = []
    for page in PAGES:
        for span in _code_spans(page):
            if span.startswith("rtseg ") or not span.startswith("--"):
                continue
            bad += [f"{_rel(page)}: `{span}`: {opt}" for opt in re.findall(r"(?<![\w-])--[a-z][\w-]*", span)
                    if opt not in known]
    assert not bad, "options that no rtseg command has:\n" + "\n".join(bad)


# -- links -------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (except - and _), spaces → -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        s = _slug(heading)
        anchors.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return anchors


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{_rel(page)}: ({target}): no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{_rel(page)}: ({target}): no heading #{anchor} in {dest.name}")
    assert not bad, "\n".join(bad)
