"""Docs cannot rot: the notebook runs headless, its outputs stay stripped, README commands parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitgender.cli import app

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip outputs before committing"


@pytest.mark.slow
def test_notebook_executes_headless(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the notebook exports artifacts: pip install .[all]")
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("VITGENDER_NOTEBOOK_WORK", str(tmp_path))  # the kernel inherits it: no stray temp folder
    before = set(Path(tempfile.gettempdir()).glob("vitgender-quickstart-*"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    assert set(Path(tempfile.gettempdir()).glob("vitgender-quickstart-*")) == before
    assert (tmp_path / "artifacts" / "manifest.json").is_file()
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "exported in" in text and "ImageClassificationOutputElement" in text


def readme_commands(page: Path = REPO / "README.md") -> list[list[str]]:
    """Every `vitgender ...` line inside a page's code fences, continuation lines joined."""
    commands, inside, block = [], False, []
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            if inside:
                for statement in "\n".join(block).replace("\\\n", " ").splitlines():
                    match = re.search(r"(?:^|[\s/])vitgender (\w.*)$", statement.strip())
                    if match and not statement.strip().startswith("#"):
                        command = re.split(r" >>| &&| \|", match[1])[0]
                        commands.append(shlex.split(command, comments=True))
            inside, block = not inside, []
        elif inside:
            block.append(line)
    return commands


def test_readme_has_commands_for_every_subcommand():
    used = {c[0] for c in readme_commands()}
    assert {"classify", "verify", "export", "validate", "evaluate", "serve", "bench", "train"} <= used


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_lines_parse(argv):
    """Each README command parses against the real CLI (options, types, choices), without running it."""
    from typer.main import get_command

    command = get_command(app).commands[argv[0]]
    command.make_context(argv[0], argv[1:])  # raises click.UsageError / BadParameter on a stale line


DOCS_PAGES = sorted((REPO / "docs").rglob("*.md"))


@pytest.mark.parametrize(
    "argv", [argv for page in DOCS_PAGES for argv in readme_commands(page)], ids=lambda a: " ".join(a)[:60]
)
def test_docs_site_command_lines_parse(argv):
    """The docs site's command lines parse against the real CLI too."""
    test_readme_command_lines_parse(argv)


def test_every_subcommand_has_help():
    from typer.main import get_command

    for name in get_command(app).commands:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name


def test_readme_cheap_commands_run_as_written(tiny_model, tmp_path):
    """The README's quick lines, run (not only parsed) with the documented placeholders filled in."""
    import shutil
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "vitgender.cli", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copytree(tiny_model, tmp_path / "my-checkpoint")
    (tmp_path / "my-checkpoint" / "SHA256SUMS").unlink()
    assert ["classify", "examples/"] in readme_commands()
    assert run("classify", "examples/").returncode == 0
    assert ["verify", "--write", "my-checkpoint/"] in readme_commands() and [
        "verify",
        "my-checkpoint/",
    ] in readme_commands()
    assert run("verify", "--write", "my-checkpoint/").returncode == 0
    assert run("verify", "my-checkpoint/").returncode == 0


def test_readme_is_a_landing_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README has {len(lines)} lines: move detail to docs/"
    # The first screen: exactly the two set-up commands (install + classify, then the tests).
    first_fence = lines.index("```bash")
    block = lines[first_fence + 1 : lines.index("```", first_fence + 1)]
    commands = [line for line in block if line.strip() and not line.startswith("#")]
    assert commands == ["bash scripts/setup.sh && .venv/bin/vitgender classify examples/", ".venv/bin/python -m pytest"]


HISTORY_WORDS = re.compile(r"issue #?\d+|#\d{2,}\b|\bwave\b|this session|earlier session|free-batch export", re.I)


@pytest.mark.parametrize("page", [REPO / "README.md", *DOCS_PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_carry_no_development_history(page):
    """What changed belongs in CHANGELOG.md, not in pages a user reads to get a job done."""
    assert not HISTORY_WORDS.findall(page.read_text())


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: broken links between pages, missing nav pages or anchors fail it."""
    pytest.importorskip("mkdocs", reason="the docs site needs the docs extra: pip install .[docs]")
    import subprocess
    import sys

    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
