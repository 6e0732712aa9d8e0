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
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "training" not in path.relative_to(PACKAGE).parts
        and path != PACKAGE / "cli" / "train.py"
        and any(name.startswith("vitgender.training") for name in _imports(path))
    ]
    assert offenders == []


def test_reporting_is_not_imported_by_what_it_renders():
    """validators/ return data; only the CLI (and the notebook) render it."""
    for folder in ("validators", "runtimes", "exporters", "serving"):
        for path in (PACKAGE / folder).rglob("*.py"):
            assert not any(n.startswith("vitgender.reporting") for n in _imports(path)), path


def test_export_help_lists_every_registered_format_and_group():
    result = subprocess.run(
        [sys.executable, "-m", "vitgender.cli", "export", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\s+", " ", re.sub(r"-\s*\n\s*", "-", result.stdout))  # undo the help formatter's wrapping
    for name in [*FORMATS, *GROUPS]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name


def test_every_spec_names_a_registered_runtime_and_a_unique_file():
    from vitgender.runtimes import runtime_names

    assert {spec.runtime for spec in FORMATS.values()} <= set(runtime_names())
    files = [spec.filename for spec in FORMATS.values()]
    assert len(files) == len(set(files))


# --- the import graph, function-level imports included ---------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, methods, try blocks), except those under
    `if TYPE_CHECKING:`, which never run and so cannot close a circle."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from a import b` counts as a.b when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, iterators = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while iterators:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                iterators.append(iter(sorted(graph[child])))
    return None


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitgender"


# layer -> the layers it must never import. Foundation modules (registries, manifest, scoring,
# output folders, child processes) sit below every subpackage that uses them.
FORBIDDEN = {
    "validators": {"exporters", "reporting", "cli", "serving", "batch", "training", "explain"},
    "runtimes": {"exporters", "validators", "reporting", "cli", "serving", "batch", "training", "explain"},
    "exporters": {"reporting", "cli", "serving", "batch", "training", "explain"},
    "reporting": {"cli", "serving", "batch", "training", "exporters"},
    "serving": {"cli", "exporters", "validators", "reporting", "training"},
    "batch": {"cli", "exporters", "validators", "reporting", "training", "serving"},
    **{
        foundation: {
            "exporters",
            "validators",
            "reporting",
            "cli",
            "serving",
            "batch",
            "training",
            "explain",
            "runtimes",
        }
        for foundation in (
            "formats",
            "manifest",
            "scoring",
            "output_folders",
            "errors",
            "precision",
            "toolchains",
            "inputs",
        )
    },
}


def test_layers_import_only_downwards():
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) in FORBIDDEN.get(_layer(module), set())
    )
    assert offenders == []


def test_nothing_imports_the_cli_but_the_cli():
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target.startswith("vitgender.cli") and not module.startswith("vitgender.cli")
    )
    assert offenders == []
