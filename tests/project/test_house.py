"""The house rules of docs/architecture.md that are about the shape of the code, measured from the
source of ``vhctl/`` (nothing is imported or run).

- no import circle between files (an import inside a function counts; a package ``__init__`` that
  re-exports its modules depends on them);
- no file over 600 lines, no command module of the CLI (``vhctl/cli/<command>.py``) over 250;
- few long functions: at most :data:`LONG_FUNCTIONS_ALLOWED` over 80 lines;
- no private name (``_name``) imported from another module;
- every module declares ``__all__``.

The one-way layers are ``tests/project/test_architecture.py``. Run both alone with
``python -m pytest -q tests/project/test_house.py tests/project/test_architecture.py``; each failure
lists the offending files and lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "vhctl"

MAX_FILE_LINES = 600
MAX_COMMAND_LINES = 250
LONG_FUNCTION = 80
LONG_FUNCTIONS_ALLOWED = 4

# Modules being reworked on another branch when this test came (#26): they get their ``__all__``
# there. The test fails once one of them has it, so that this set only shrinks.
ALL_PENDING: set[str] = set()


@dataclass
class Module:
    """One file of ``vhctl/``: its dotted name, source tree and the modules it imports."""

    name: str
    rel: str  # the path from the repository root, vhctl/...
    tree: ast.Module
    lines: int
    imports: set[str] = field(default_factory=set)
    private: list[str] = field(default_factory=list)

    @property
    def is_package(self) -> bool:
        return self.rel.endswith("/__init__.py")


def _dotted(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def read_package(sources: dict[str, str] | None = None) -> dict[str, Module]:
    """Every module of ``vhctl/`` with the vhctl modules it imports; ``sources`` (path from the
    repository root -> text) stands in for the files."""
    if sources is None:
        sources = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in PKG.rglob("*.py")}
    modules: dict[str, Module] = {}
    for rel, text in sorted(sources.items()):
        name = _dotted(Path(rel))
        modules[name] = Module(name, rel, ast.parse(text), text.count("\n") + 1)

    def known(name: str) -> str | None:  # the module a dotted name lives in (its longest known prefix)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names if alias.name.startswith("vhctl")]
            elif isinstance(node, ast.ImportFrom) and _base(module, node).startswith("vhctl"):
                base = _base(module, node)
                targets = [known(f"{base}.{alias.name}") for alias in node.names]
                source = known(base)
                for alias in node.names:
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and source != module.name
                    ):
                        module.private.append(f"{module.rel}:{node.lineno} takes {alias.name} from {base}")
            else:
                continue
            module.imports |= {t for t in targets if t is not None and t != module.name}
    return modules


def import_circles(modules: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(modules[start].imports)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(modules[child].imports))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def long_functions(modules: dict[str, Module]) -> list[str]:
    found = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONG_FUNCTION:
                    found.append(f"{module.rel}:{node.lineno} {node.name} ({length} lines)")
    return sorted(found)


def declares_all(module: Module) -> bool:
    for node in module.tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
        if isinstance(node, ast.ImportFrom) and any(a.asname == "__all__" for a in node.names):
            return True  # an alias module re-exporting another's list
    return False


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return read_package()


def test_no_import_circle(package: dict[str, Module]) -> None:
    circles = import_circles(package)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_files_are_small(package: dict[str, Module]) -> None:
    big = []
    for module in package.values():
        command = module.rel.startswith("vhctl/cli/") and not Path(module.rel).name.startswith("_")
        limit = MAX_COMMAND_LINES if command else MAX_FILE_LINES
        if module.lines > limit:
            big.append(f"{module.rel}: {module.lines} lines (limit {limit})")
    assert not big, "\n".join(big)


def test_few_long_functions(package: dict[str, Module]) -> None:
    found = long_functions(package)
    assert len(found) <= LONG_FUNCTIONS_ALLOWED, (
        f"{len(found)} functions over {LONG_FUNCTION} lines:\n" + "\n".join(found)
    )


def test_no_private_import_across_modules(package: dict[str, Module]) -> None:
    found = [line for module in package.values() for line in module.private]
    assert not found, "\n".join(found)


def test_every_module_declares_all(package: dict[str, Module]) -> None:
    missing = {m.rel for m in package.values() if not declares_all(m)}
    assert missing - ALL_PENDING == set(), "declare __all__ in:\n" + "\n".join(sorted(missing - ALL_PENDING))
    assert ALL_PENDING - missing == set(), "these have __all__ now: drop them from ALL_PENDING"


def test_the_checks_can_fail() -> None:
    """A circle through a deferred and a relative import, a private import, a long function and a
    module without ``__all__`` are all found (so the tests above can fail)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(LONG_FUNCTION))
    modules = read_package(
        {
            "vhctl/__init__.py": "__all__ = []\n",
            "vhctl/a.py": "__all__ = []\ndef f():\n    from vhctl.b import _hidden\n",
            "vhctl/b.py": f"from .a import f\n_hidden = 1\ndef g():\n{body}\n",
        }
    )
    assert import_circles(modules) == [["vhctl.a", "vhctl.b"]]
    assert modules["vhctl.a"].private == ["vhctl/a.py:3 takes _hidden from vhctl.b"]
    assert [f.split(" ")[1] for f in long_functions(modules)] == ["g"]
    assert [m.name for m in modules.values() if not declares_all(m)] == ["vhctl.b"]


def test_nothing_cites_a_path_outside_the_repository() -> None:
    """A clone has only the repository: no tracked file may send a reader to a folder beside it."""
    import re
    import subprocess

    try:
        tracked = (
            subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    outside = re.compile("|".join([r"\.\./" + "shared", "/" + "work/", r"/\." + "library"]))
    found = []
    for rel in filter(None, tracked):
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not found, "paths outside the repository:\n" + "\n".join(found)
