"""The package's shape (docs/architecture.md): imports point down the phases and never form a cycle.

core (the modules directly in src/gptforge) <- interop/ <- train/ and use/ <- bench.py, cli.py. Every import
counts, those inside functions and under TYPE_CHECKING too: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gptforge

PACKAGE = Path(gptforge.__file__).resolve().parent
TOP = {"gptforge.bench", "gptforge.cli", "gptforge.__main__"}
# what each layer may import besides itself (core may import only core)
ALLOWED = {"core": {"core"}, "interop": {"core"}, "train": {"core", "interop"}, "use": {"core", "interop"}}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def layer(module: str) -> str:
    parts = module.split(".")
    if module in TOP:
        return "top"
    return parts[1] if len(parts) > 2 else "core"


def imports_of(module: str, known: set[str]) -> set[str]:
    """The gptforge modules `module` imports anywhere in its text (a package's __init__ counts as the package)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from gptforge.train import x`
    return {name for name in found if name in known and name != module and name != "gptforge"}


def import_graph() -> dict[str, set[str]]:
    known = set(module_names())
    return {module: imports_of(module, known) for module in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_point_down_the_phases() -> None:
    upward = []
    for module, targets in import_graph().items():
        source = layer(module)
        if source == "top":
            continue
        for target in targets:
            kind = layer(target)
            if kind not in ALLOWED[source] | {source} or kind == "top":
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_nothing_imports_the_cli() -> None:
    importers = [module for module, targets in import_graph().items() if "gptforge.cli" in targets]
    assert importers == ["gptforge.__main__"]


FIRST_IMPORT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [key for key in sys.modules if key == "gptforge" or key.startswith("gptforge.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module, imported before any other of gptforge, loads: an import cycle fails in some order. One fresh
    interpreter forgets gptforge between modules (torch and the rest stay loaded, which changes nothing here)."""
    modules = [name for name in module_names() if name != "gptforge.__main__"]
    result = subprocess.run([sys.executable, "-c", FIRST_IMPORT, *modules], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr[-2000:]
