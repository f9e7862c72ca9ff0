"""The docs site and the README: every page in the nav, every link to a page resolving, the API
reference naming every public name, and the tables the code also holds equal to the code's.

`mkdocs build --strict` (in .ci/run, with the docs extra) checks links, anchors and docstrings
as MkDocs renders them; these tests need only the test extra, so they run with the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import vhctl

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```$", re.S | re.M)


def nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


def markdown_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in markdown_pages()}
    assert len(nav) == len(set(nav)), "a page is twice in the nav"
    assert set(nav) == pages
    for required in ("ci.md", "serving.md", "api.md", "architecture.md", "development.md"):
        assert required in nav


def _relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [
        link for link in LINK.findall(text) if "://" not in link and not link.startswith(("#", "mailto:"))
    ]


def test_links_between_pages_resolve() -> None:
    broken = []
    for path in [ROOT / "README.md", *markdown_pages()]:
        for link in _relative_links(path):
            target = (path.parent / link.split("#")[0]).resolve()
            if not target.exists():
                broken.append(f"{path.relative_to(ROOT)}: {link}")
            elif path.parent == DOCS or DOCS in path.parents:
                # Inside the site, links must stay inside docs/ (MkDocs cannot serve the rest).
                if DOCS not in target.parents:
                    broken.append(f"{path.relative_to(ROOT)}: {link} leaves docs/")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_command_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((DOCS / "commands").glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/commands/{page.name})" in readme, page.name
    assert "(docs/serving.md)" in readme


def test_the_api_reference_renders_every_public_name() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    directives = set(re.findall(r"^::: ([\w.]+)\s*$", api, re.M))
    for name in vhctl.__all__:
        if name == "__version__":
            assert "`__version__`" in api
        else:
            assert f"vhctl.{name}" in directives, name
    for entry in ("vhctl.modeling.load_checkpoint", "vhctl.scoring.Scorer", "vhctl.ops.export.export_checkpoint",
                  "vhctl.ops.push.push_checkpoint", "vhctl.checkpoint.validate.validate_checkpoint",
                  "vhctl.integrations.trl.trl_reward"):  # fmt: skip
        assert entry in directives, entry


def test_the_problem_code_table_is_the_codes_the_validator_knows() -> None:
    from vhctl.checkpoint.validate import PROBLEM_CODES

    page = (DOCS / "commands" / "validate.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z-]+)` \| (error|warning) \| (.*) \|$", page, re.M)
    assert {code: (severity, meaning) for code, severity, meaning in rows} == PROBLEM_CODES
    assert len(rows) == len(PROBLEM_CODES)


def test_the_key_map_table_is_the_one_keymaps_generates() -> None:
    from vhctl.formats.keymaps import markdown_table

    assert markdown_table().strip() in (DOCS / "interop.md").read_text(encoding="utf-8")


def test_no_page_shows_an_old_spelling() -> None:
    """Moved import paths and changed options are not taught anywhere (the deprecation note may name them)."""
    old = [
        (re.compile(r"from vhctl\.checkpoint\.load import"), "from vhctl.modeling import load_checkpoint"),
        (re.compile(r"score\b[^\n]*--reward [a-z]"), "--reward-adapter NAME (--reward is a flag)"),
        (re.compile(r"^(?!.*--init normal).*--std\b", re.M), "--std needs --init normal"),
        (re.compile(r"\bvhctl\.batching\b"), "vhctl.scoring.batching"),
    ]
    found = []
    for path in [ROOT / "README.md", *markdown_pages()]:
        code = "\n".join(FENCE.findall(path.read_text(encoding="utf-8")))
        for pattern, instead in old:
            if pattern.search(code):
                found.append(f"{path.relative_to(ROOT)}: {pattern.pattern} (use {instead})")
    assert not found, "\n".join(found)
