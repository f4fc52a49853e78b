"""The house's rooms and what each may import (docs/architecture.md), read from the source with ``ast``.

Every import counts, including those inside functions and under ``if TYPE_CHECKING:``: a cycle the
interpreter never meets at run time is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: installed package name -> folder
PACKAGES = {"pvccore": ROOT / "pvccore", "pvcapi": ROOT / "api", "pvccli": ROOT / "cli", "pvcplugins": ROOT / "plugins"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports (a name imported from a package counts as its submodule when it
    is one); third-party and standard-library modules by their top-level name."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _in(module: str, *rooms: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in rooms)


def test_no_import_cycle_in_the_project():
    project = {m: {i for i in deps if i in MODULES and i != m} for m, deps in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(project[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(project):
        if v not in index:
            visit(v)
    assert cycles == []


#: room -> what it must never import (a prefix of a module name)
FORBIDDEN = {
    "pvccore.domain": ("pvccore.zk", "pvccore.node", "pvccore.operations", "pvccore.config", "pvccore.plugins",
                       "pvccore.demo", "pvcapi", "pvccli", "kazoo", "libvirt", "falcon", "click", "gunicorn"),
    "pvccore.zk": ("pvccore.node", "pvccore.operations", "pvccore.demo", "pvcapi", "pvccli", "libvirt", "falcon",
                   "click"),
    "pvccore.operations": ("pvccore.node", "pvccore.demo", "pvcapi", "pvccli", "libvirt", "falcon", "click"),
    "pvccore.node": ("pvccore.operations", "pvccore.demo", "pvcapi", "pvccli", "falcon", "click"),
    "pvccore.hookspecs": ("pvccore.zk", "pvccore.node", "pvccore.operations", "kazoo", "libvirt"),
    "pvcapi": ("pvccore.node", "pvccore.demo", "pvccli", "libvirt", "click"),
    "pvccli": ("pvccore.node", "pvccore.zk", "pvccore.operations", "pvccore.demo", "kazoo", "libvirt", "falcon"),
    "pvcplugins": ("pvccore.node", "pvccore.zk", "pvccore.operations", "pvcapi", "pvccli"),
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_each_room_imports_only_what_it_may(room):
    broken = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if _in(m, room)
                    for i in deps if _in(i, *FORBIDDEN[room]))
    assert broken == []


def test_the_production_package_ships_no_test_tooling():
    """The embedded demo cluster lives in pvccore.demo, named as such; nothing else in pvccore imports it."""
    users = sorted(m for m, deps in GRAPH.items() if not _in(m, "pvccore.demo")
                   and _in(m, "pvccore", "pvcapi", "pvccli", "pvcplugins") and any(_in(i, "pvccore.demo") for i in deps))
    assert users == []


@pytest.mark.parametrize("module, absent", [
    ("pvcapi.app", "libvirt"),
    ("pvccli.main", "falcon"),
    ("pvccli.main", "kazoo"),
    ("pvccore.domain.placement", "kazoo"),
    ("pvccore.operations", "libvirt"),
])
def test_a_fresh_interpreter_importing_a_room_does_not_load(module, absent):
    code = f"import {module}, sys; assert {absent!r} not in sys.modules, sorted(m for m in sys.modules if '{absent}' in m)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
