"""The pre-commit hooks (.pre-commit-hooks.yaml), run with ``pre-commit try-repo`` in a temporary
git repository that keeps a sound and a broken checkpoint.

``vhctl-validate`` (``language: python``) makes pre-commit build its own environment and pip-install
this repository into it. To keep that offline and quick, pip is told to use no index and to find
the dependencies (torch, transformers...) already installed next to this Python, through
PYTHONPATH; the vhctl that runs is the one pre-commit installed. ``vhctl-validate-system``
(``language: system``) runs the vhctl on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from vhctl.constants import VALUE_HEAD_NAME

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / ".pre-commit-hooks.yaml"


def hooks() -> dict[str, dict[str, Any]]:
    return {hook["id"]: hook for hook in yaml.safe_load(HOOKS.read_text(encoding="utf-8"))}


def test_hook_metadata() -> None:
    found = hooks()
    assert set(found) == {"vhctl-validate", "vhctl-validate-system"}
    assert found["vhctl-validate"]["language"] == "python"
    assert found["vhctl-validate-system"]["language"] == "system"
    for hook in found.values():
        assert hook["name"] and hook["description"]
        assert hook["entry"] == "vhctl validate --from-manifests"
        assert hook.get("pass_filenames", True) is True
        pattern = re.compile(hook["files"])
        for name in ("vhctl.json", "runs/a/ckpt/vhctl.json", "ckpt/ref/vhctl.json"):
            assert pattern.search(name), name
        for name in ("vhctl.json.bak", "my-vhctl.json", "runs/vhctl.jsonl", "config.json"):
            assert not pattern.search(name), name


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkpoints_repo(tmp_path: Path, tiny_ckpt: Path) -> Path:
    """A git repository with ``models/good`` (sound) and ``models/bad`` (8 bytes appended to its head), committed."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if not (ROOT / ".git").exists():
        pytest.skip("pre-commit try-repo needs this project as a git checkout")
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--error-unmatch", ".pre-commit-hooks.yaml"],
        capture_output=True,
        check=False,
    )
    if tracked.returncode != 0:
        pytest.skip(".pre-commit-hooks.yaml is not tracked by git yet (try-repo only sees tracked files)")
    repo = tmp_path / "repo"
    shutil.copytree(tiny_ckpt, repo / "models" / "good")
    shutil.copytree(tiny_ckpt, repo / "models" / "bad")
    head = repo / "models" / "bad" / VALUE_HEAD_NAME
    head.write_bytes(head.read_bytes() + b"\0" * 8)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "checkpoints")
    return repo


def try_repo(repo: Path, hook: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), hook, *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }


def test_system_hook_with_try_repo(checkpoints_repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("pre_commit")
    done = try_repo(checkpoints_repo, "vhctl-validate-system", "--all-files", env=_base_env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert re.search(r"vhctl validate \(installed vhctl\)\.+Failed", out)
    assert "error\tsize-mismatch\tvalue_head.safetensors" in out
    assert "models/bad: 1 error(s), 0 warning(s)" in out and "models/good is valid" in out
    done = try_repo(
        checkpoints_repo,
        "vhctl-validate-system",
        "--files",
        "models/good/vhctl.json",
        env=_base_env(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"vhctl validate \(installed vhctl\)\.+Passed", done.stdout)


@pytest.mark.slow
def test_python_hook_with_try_repo(checkpoints_repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("pre_commit")
    paths = sysconfig.get_paths()
    # No vhctl on PATH: the hook can only run the one pre-commit installed into its environment.
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "vhctl").exists()]
    env = {
        **_base_env(tmp_path),
        "PATH": os.pathsep.join(path),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]])),
        "PIP_NO_INDEX": "1",  # never download: the dependencies are found through PYTHONPATH
        # pip reads a false value of a --no-* variable as the flag given: no build isolation, so
        # the build backend (setuptools) is the one found there too.
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = try_repo(checkpoints_repo, "vhctl-validate", "--all-files", env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert re.search(r"vhctl validate\.+Failed", out)
    assert "error\tsize-mismatch\tvalue_head.safetensors" in out
    assert "models/bad: 1 error(s), 0 warning(s)" in out and "models/good is valid" in out
