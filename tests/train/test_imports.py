"""Every mft_train module imports on its own, and the modules import each other without a cycle (counting the
imports inside functions too: a cycle hidden in a function is still one, as engines <-> launch once was)."""

import ast
import subprocess
import sys
from pathlib import Path

import mft_train
import pytest

PACKAGE = Path(mft_train.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """The mft_train modules ``module`` imports anywhere in its source (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("mft_train."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mft_train."))
    return found & set(MODULES)


@pytest.mark.fast  # unit/contract tier: `make test-fast` (the subprocesses below take ~2 min on 2 cores)
def test_the_module_graph_has_no_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    assert "engines" in graph["session"] and "launch" not in graph["engines"]  # the graph is really read
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + (module,)
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + (module,))
        done.add(module)

    for module in MODULES:
        visit(module, ())


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module):
    proc = subprocess.run(
        [sys.executable, "-c", f"import mft_train.{module}"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
