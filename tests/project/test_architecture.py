"""The layering docs/architecture.md describes holds in the code.

The page's table says, for each package of vhctl, which other packages it may import; this test
reads that table (so the page and the rule cannot drift apart) and every ``import vhctl...`` of
every module (also those inside functions, and relative imports), and fails on an import the table
does not allow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "vhctl"
FLOOR = {"constants", "errors", "dtypes", "_version", "_tiny"}
# Old import paths kept as aliases until they go (the page names them): they import upwards.
ALIASES = {"vhctl/checkpoint/load.py", "vhctl/distributed.py"}
ROW = re.compile(r"^\| `vhctl/(\w+)/` \| .* \| ([^|]*) \|$")


def allowed_imports() -> dict[str, set[str]]:
    """package -> the packages it may import (floor expanded), from the page's table."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            names = set(re.findall(r"`(\w+)`", match.group(2)))
            table[match.group(1)] = names | (FLOOR if "floor" in match.group(2) else set())
    return table


def vhctl_imports(path: Path, source: str | None = None) -> set[str]:
    """The top-level vhctl packages or modules ``path`` imports (``vhctl.scoring.x`` -> ``scoring``);
    ``source`` stands in for the file's text."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = list(rel if path.name == "__init__.py" else rel[:-1])
    if path.name == "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    text = source if source is not None else path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] if module != "vhctl" else [f"vhctl.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vhctl" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_the_table_lists_every_package() -> None:
    table = allowed_imports()
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()} - FLOOR
    assert packages - set(table) == set(), "add these packages to docs/architecture.md"
    assert {"io", "checkpoint", "modeling", "scoring", "cli"} <= set(table)


def test_every_import_goes_down() -> None:
    table = allowed_imports()
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALIASES:
            continue
        parts = path.relative_to(PKG).parts
        own = parts[0] if len(parts) > 1 else path.stem
        if own in FLOOR:
            allowed = FLOOR
        elif own in table:
            allowed = table[own]
        else:  # vhctl/__init__.py (lazy public names), __main__.py (the CLI)
            allowed = {"__init__": {"modeling", "_version"}, "__main__": {"cli"}}[own]
        for target in sorted(vhctl_imports(path) - allowed - {own}):
            wrong.append(f"{rel} imports vhctl.{target}")
    assert not wrong, "imports the architecture does not allow:\n" + "\n".join(wrong)


def test_the_checker_sees_deferred_and_relative_imports() -> None:
    """An import inside a function, a relative one and ``from vhctl import x`` are all found (so the
    test above can fail)."""
    source = "def f():\n    from vhctl.scoring import Scorer\nfrom ..modeling import wrapper\nfrom vhctl import cli\n"
    assert vhctl_imports(PKG / "checkpoint" / "heads.py", source) == {"scoring", "modeling", "cli"}
    assert vhctl_imports(PKG / "checkpoint" / "__init__.py", "from .heads import find_head\n") == {
        "checkpoint"
    }


# Each command that writes, and the module of vhctl/ops/ that is its operation.
WRITING_COMMANDS = {
    "wrap": "wrap",
    "make_ref": "make_ref",
    "attach": "attach",
    "export": "export",
    "push": "push",
}


def test_every_writing_command_runs_its_operation_from_ops() -> None:
    """A contributor finds what each writing command does in one package: the command's module
    imports its operation from ``vhctl.ops`` and nothing else that writes."""
    for command, operation in WRITING_COMMANDS.items():
        path = PKG / "cli" / f"{command}.py"
        modules = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
        assert f"vhctl.ops.{operation}" in modules, f"cli/{command}.py does not call vhctl.ops.{operation}"
        assert not {"vhctl.formats.export", "vhctl.hub.push"} & modules, command
        assert (PKG / "ops" / f"{operation}.py").is_file()
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| `vhctl/ops/` |"))
    for operation in WRITING_COMMANDS.values():
        assert f"`{operation}`" in row, f"the ops/ row of docs/architecture.md does not name {operation}"
