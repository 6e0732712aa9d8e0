"""The architecture's rules, checked: one format registry drives everything, and training/ stays a leaf."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from vitgender.formats import FORMATS, GROUPS

PACKAGE = Path(__file__).resolve().parent.parent / "vitgender"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_nothing_outside_training_imports_it_but_the_train_command():
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if "training" not in path.relative_to(PACKAGE).parts and path != PACKAGE / "cli" / "train.py"
                 and any(name.startswith("vitgender.training") for name in _imports(path))]
    assert offenders == []


def test_reporting_is_not_imported_by_what_it_renders():
    """validators/ return data; only the CLI (and the notebook) render it."""
    for folder in ("validators", "runtimes", "exporters", "serving"):
        for path in (PACKAGE / folder).rglob("*.py"):
            assert not any(n.startswith("vitgender.reporting") for n in _imports(path)), path


def test_export_help_lists_every_registered_format_and_group():
    result = subprocess.run([sys.executable, "-m", "vitgender.cli", "export", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\s+", " ", re.sub(r"-\s*\n\s*", "-", result.stdout))  # undo the help formatter's wrapping
    for name in [*FORMATS, *GROUPS]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name


def test_every_spec_names_a_registered_runtime_and_a_unique_file():
    from vitgender.runtimes import runtime_names

    assert {spec.runtime for spec in FORMATS.values()} <= set(runtime_names())
    files = [spec.filename for spec in FORMATS.values()]
    assert len(files) == len(set(files))
