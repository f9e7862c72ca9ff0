"""The GitHub Action (action.yml): its metadata, and its run steps executed here with bash.

The steps are run as the runner would run them: each ``run:`` body with ``bash --noprofile --norc
-eo pipefail``, in the workspace, with the step's ``env:`` (inputs substituted) and
``GITHUB_ACTION_PATH`` set; ``uses:`` steps (actions/setup-python) cannot run here and are skipped,
and ``VHCTL_ACTION_SKIP_INSTALL=1`` makes the install step use the vhctl under test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import V_HEAD_BIAS, V_HEAD_WEIGHT, VALUE_HEAD_NAME

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".github" / "actions" / "validate.sh"
INPUTS = {"path", "deep", "python-version", "vhctl-version"}


def action() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))


def test_metadata_has_the_required_keys() -> None:
    meta = action()
    assert isinstance(meta["name"], str) and meta["name"].strip()
    assert isinstance(meta["description"], str) and meta["description"].strip()
    assert meta["runs"]["using"] == "composite"
    assert set(meta["inputs"]) == INPUTS
    for name, spec in meta["inputs"].items():
        assert isinstance(spec.get("description"), str) and spec["description"].strip(), name
    assert meta["inputs"]["path"]["required"] is True
    defaults = {name: spec.get("default") for name, spec in meta["inputs"].items()}
    assert defaults["deep"] == "false" and defaults["vhctl-version"] == "latest"
    assert re.fullmatch(r"3\.\d+", defaults["python-version"])
    steps = meta["runs"]["steps"]
    setup = [s for s in steps if "uses" in s]
    assert [s["uses"].split("@")[0] for s in setup] == ["actions/setup-python"]
    assert setup[0]["with"]["python-version"] == "${{ inputs.python-version }}"
    runs = [s for s in steps if "run" in s]
    assert runs and all(s.get("shell") == "bash" for s in runs)  # composite run steps need a shell
    for step in runs:  # inputs reach the script through env only, never pasted into shell code
        assert "${{" not in step["run"]


def test_install_step_pins_a_cpu_torch_then_vhctl() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert (
        "pip install --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu"
        in text
    )
    torch_at, vhctl_at = text.index("whl/cpu"), text.index('"$(vhctl_requirement')
    assert torch_at < vhctl_at  # torch first, so vhctl's dependency is already met by the CPU build


@pytest.mark.parametrize(
    ("version", "requirement"),
    [
        ("latest", "vhctl"),
        ("", "vhctl"),
        ("0.1.0", "vhctl==0.1.0"),
        ("1.2.0rc1", "vhctl==1.2.0rc1"),
        ("git+https://github.com/org/vhctl@main", "git+https://github.com/org/vhctl@main"),
        (".", "."),
        ("./vendor/vhctl", "./vendor/vhctl"),
    ],
)
def test_vhctl_version_input(version: str, requirement: str) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "requirement"],
        env={**os.environ, "VHCTL_VERSION": version},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == requirement + "\n"


def run_action(
    workspace: Path, inputs: dict[str, str], first_on_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the action's ``run`` steps in order, stopping at the first that fails (as the runner does).

    ``vhctl`` is the one next to this Python (the code under test) unless ``first_on_path`` has one.
    """
    meta = action()
    values = {name: str(spec.get("default", "")) for name, spec in meta["inputs"].items()}
    values.update(inputs)

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], text)

    env = {
        **os.environ,
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_WORKSPACE": str(workspace),
        "VHCTL_ACTION_SKIP_INSTALL": "1",
        "PATH": os.pathsep.join(
            [
                *([str(first_on_path)] if first_on_path else []),
                os.path.dirname(sys.executable),
                os.environ["PATH"],
            ]
        ),
    }
    out, err = [], []
    done = subprocess.CompletedProcess[str](args=[], returncode=0)
    for step in meta["runs"]["steps"]:
        if "run" not in step:
            continue
        step_env = {**env, **{k: expand(str(v)) for k, v in (step.get("env") or {}).items()}}
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=step_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        out.append(done.stdout)
        err.append(done.stderr)
        if done.returncode != 0:
            break
    return subprocess.CompletedProcess(done.args, done.returncode, "".join(out), "".join(err))


@pytest.fixture
def workspace(tmp_path: Path, tiny_ckpt: Path) -> Path:
    """A repository checkout with three checkpoints: good, bad (a changed byte) and nan (a NaN head
    whose manifest was re-hashed, so only --deep sees it)."""
    runs = tmp_path / "runs"
    for name in ("good", "bad", "nan"):
        shutil.copytree(tiny_ckpt, runs / name / "ckpt")
    head = runs / "bad" / "ckpt" / VALUE_HEAD_NAME
    data = bytearray(head.read_bytes())
    data[-1] ^= 0x01
    head.write_bytes(bytes(data))
    nan = runs / "nan" / "ckpt"
    hidden = Manifest.read(nan).value_head.hidden_size
    save_file(
        {V_HEAD_WEIGHT: torch.full((1, hidden), float("nan")), V_HEAD_BIAS: torch.zeros(1)},
        str(nan / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    manifest = Manifest.read(nan)
    manifest.refresh_files(nan)
    manifest.write(nan)
    return tmp_path


def test_action_on_a_clean_checkpoint(workspace: Path) -> None:
    done = run_action(workspace, {"path": "runs/good/ckpt"})
    assert done.returncode == 0, done.stderr
    assert "install skipped" in done.stdout
    assert done.stdout.splitlines()[-1] == "vhctl validate: 1 checkpoint(s), 0 error(s), 0 warning(s)"
    assert "::error" not in done.stdout and "::warning" not in done.stdout


def test_action_on_a_glob_with_a_corrupted_checkpoint_and_deep(workspace: Path) -> None:
    done = run_action(workspace, {"path": "runs/*/ckpt\n  runs/good/ckpt\n", "deep": "true"})
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("::")]
    assert lines[0].startswith(
        "::error file=runs/bad/ckpt/value_head.safetensors,title=hash-mismatch::has sha256 "
    )
    hidden = Manifest.read(workspace / "runs" / "nan" / "ckpt").value_head.hidden_size
    assert lines[1] == (
        "::error file=runs/nan/ckpt/value_head.safetensors,title=nonfinite-head::"
        f"tensor '{V_HEAD_WEIGHT}' holds {hidden} NaN and 0 Inf value(s)"
    )
    assert len(lines) == 2
    assert done.stdout.splitlines()[-1] == (
        "vhctl validate: 3 checkpoint(s), 2 error(s), 0 warning(s); failed: runs/bad/ckpt, runs/nan/ckpt"
    )


@pytest.mark.parametrize(
    ("inputs", "argv"),
    [
        ({"path": "runs/good/ckpt"}, ["runs/good/ckpt"]),
        ({"path": "runs/good/ckpt", "deep": "True"}, ["--deep", "runs/good/ckpt"]),
        ({"path": "runs/*/ckpt", "deep": "false"}, ["runs/bad/ckpt", "runs/good/ckpt", "runs/nan/ckpt"]),
        ({"path": "runs/**/ckpt"}, ["runs/bad/ckpt", "runs/good/ckpt", "runs/nan/ckpt"]),
        ({"path": " runs/nan/ckpt\n\truns/good/ckpt \n"}, ["runs/nan/ckpt", "runs/good/ckpt"]),
        ({"path": "runs/*/missing"}, ["runs/*/missing"]),  # no match: passed as written, vhctl says so
        ({"path": "-v"}, ["-v"]),  # after '--': a path, never an option
    ],
)
def test_action_arguments(workspace: Path, tmp_path: Path, inputs: dict[str, str], argv: list[str]) -> None:
    """The run step's command line, seen by a stand-in ``vhctl`` that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "vhctl"
    stub.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\"\n")
    stub.chmod(0o755)
    done = run_action(workspace, inputs, first_on_path=bin_dir)
    assert done.returncode == 0, done.stderr
    args = done.stdout.splitlines()[1:]  # after the install step's line
    deep = ["--deep"] if argv[:1] == ["--deep"] else []
    assert args == ["validate", "--format", "github", *deep, "--", *argv[len(deep) :]]


def test_action_without_a_path(workspace: Path) -> None:
    done = run_action(workspace, {"path": " \n "})
    assert done.returncode == 2
    assert "::error title=vhctl validate::no checkpoint given" in done.stdout


def test_a_missing_checkpoint_is_an_annotation(workspace: Path) -> None:
    done = run_action(workspace, {"path": "runs/good/ckpt runs/*/missing"})
    assert done.returncode == 1
    assert "::error title=vhctl validate::runs/*/missing does not exist" in done.stdout
