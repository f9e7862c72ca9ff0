"""CI runs what the README says: `.ci/run` and `.github/workflows/ci.yml` against the README's test
command, and the lint, type and docs steps with the strictness docs/development.md documents."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def readme_blocks() -> list[str]:
    """The README's fenced code blocks, in order, without their fences."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"^```[a-z]*\n(.*?)^```$", text, re.S | re.M)]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Run the tests\*\*.*?```sh\n(.*?)\n```", text, re.S)
    assert block is not None, "the README has no 'Run the tests' block"
    return block.group(1).strip()


def ci_lines() -> list[str]:
    """.ci/run's commands: no comments, no blank lines."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def workflow() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))


def steps_running(job: dict[str, Any], needle: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if needle in step.get("run", "")]


def test_the_readme_opens_with_try_it_then_the_test_command() -> None:
    blocks = readme_blocks()
    assert blocks[0].startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e . && ")
    assert "vhctl wrap vhctl:tiny" in blocks[0]
    assert blocks[1] == readme_test_command()
    assert readme_test_command() == (
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[test]' && .venv/bin/python -m pytest -q"
    )


def test_ci_run_runs_the_readme_test_command_first() -> None:
    parts = readme_test_command().split(" && ")
    lines = ci_lines()
    start = lines.index(parts[0])
    assert lines[start : start + len(parts)] == parts
    assert all("pytest" not in line for line in lines[:start])


def test_ci_run_lint_types_docs_after_the_tests_with_the_documented_strictness() -> None:
    lines = ci_lines()
    tests = lines.index(".venv/bin/python -m pytest -q")

    def at(prefix: str) -> tuple[int, str]:
        found = [(i, line) for i, line in enumerate(lines) if line.startswith(prefix)]
        assert len(found) == 1, f".ci/run should run {prefix!r} once"
        return found[0]

    check, check_line = at(".venv/bin/ruff check")
    fmt, fmt_line = at(".venv/bin/ruff format --check")
    mypy, mypy_line = at(".venv/bin/mypy")
    docs, docs_line = at("NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict")
    install_docs, _ = at(".venv/bin/pip install -q -e '.[docs]'")
    assert tests < check < fmt < mypy < docs
    assert install_docs < docs
    # Every step fails CI: nothing is swallowed with `|| ...`.
    assert all("||" not in line for line in (check_line, fmt_line, mypy_line, docs_line))
    assert "set -euo pipefail" in lines


def test_ci_run_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], check=True)


def test_workflow_jobs_and_triggers() -> None:
    flow = workflow()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    assert set(flow["jobs"]) == {"test", "lint", "types", "docs"}
    for job in flow["jobs"].values():
        assert job["runs-on"].startswith("ubuntu-")
        assert job["name"]
        assert job["steps"][0]["uses"].startswith("actions/checkout@")


def test_workflow_tests_every_python_with_the_readme_command() -> None:
    job = workflow()["jobs"]["test"]
    versions = job["strategy"]["matrix"]["python-version"]
    assert versions == PYTHONS
    assert all(isinstance(v, str) for v in versions)  # 3.10 as a number would be 3.1
    assert job["strategy"]["fail-fast"] is False
    setup = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup and setup[0]["with"]["python-version"] == "${{ matrix.python-version }}"
    runs = [s for s in job["steps"] if "run" in s]
    assert runs[-1]["run"].strip() == readme_test_command()
    assert not runs[-1].get("continue-on-error")
    # torch's CPU build is installed first, at the README's pin, from PyTorch's CPU index.
    torch = runs[-2]["run"]
    assert "torch==2.13.0" in torch and "--index-url" in torch
    assert workflow()["env"]["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"


def test_workflow_lint_types_docs_steps() -> None:
    jobs = workflow()["jobs"]
    (check,) = steps_running(jobs["lint"], "ruff check")
    (fmt,) = steps_running(jobs["lint"], "ruff format --check")
    (mypy,) = steps_running(jobs["types"], "mypy")
    (docs,) = steps_running(jobs["docs"], "mkdocs build --strict")
    assert check["run"].strip() == "ruff check ."
    assert not any(step.get("continue-on-error") for step in (check, fmt, mypy, docs))
    for job in ("types", "docs"):
        installs = " ".join(s.get("run", "") for s in jobs[job]["steps"])
        assert '--index-url "$TORCH_CPU_INDEX"' in installs


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def _extras() -> dict[str, list[str]]:
    return pyproject()["project"]["optional-dependencies"]


def test_the_extras_hold_the_tools_ci_runs() -> None:
    extras = _extras()
    names = {
        extra: {re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower() for req in reqs}
        for extra, reqs in extras.items()
    }
    assert {"ruff", "mypy", "pre-commit", "pyyaml"} <= names["test"]
    assert {"mkdocs", "mkdocs-material", "mkdocstrings-python"} <= names["docs"]
    # The lint job installs the same ruff as the test extra.
    (install,) = steps_running(workflow()["jobs"]["lint"], "pip install")
    ruff = next(req for req in extras["test"] if req.startswith("ruff"))
    assert shlex.quote(ruff) in install["run"] or f'"{ruff}"' in install["run"]


def test_the_python_range_matches_the_matrix() -> None:
    project = pyproject()
    assert project["project"]["requires-python"] == f">={PYTHONS[0]}"
    assert project["tool"]["mypy"]["python_version"] == PYTHONS[0]
    assert project["tool"]["ruff"]["target-version"] == "py" + PYTHONS[0].replace(".", "")


def test_pre_commit_runs_ruff_and_mypy_locally() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert all(repo["repo"] == "local" for repo in config["repos"])
    assert set(hooks) == {"ruff-check", "ruff-format", "mypy"}
    assert hooks["ruff-check"]["entry"].split()[:2] == ["ruff", "check"]
    assert hooks["ruff-format"]["entry"].split()[:2] == ["ruff", "format"]
    assert hooks["mypy"]["entry"] == "mypy" and hooks["mypy"]["pass_filenames"] is False
    assert all(hook["language"] == "system" for hook in hooks.values())


@pytest.mark.parametrize("path", [".pre-commit-config.yaml", ".github/workflows/ci.yml", "mkdocs.yml"])
def test_yaml_files_parse(path: str) -> None:
    assert isinstance(yaml.safe_load((ROOT / path).read_text(encoding="utf-8")), dict)
