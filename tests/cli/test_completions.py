"""The shell completion scripts in completions/ are the ones the app generates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELLS = ("bash", "zsh", "fish")


def _generate(shell: str) -> str:
    env = {**os.environ, "_VHCTL_COMPLETE": f"source_{shell}"}
    code = "from vhctl.cli.app import app; app(prog_name='vhctl')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_scripts_are_up_to_date(shell: str) -> None:
    """Regenerate with: for s in bash zsh fish; do _VHCTL_COMPLETE=source_$s vhctl > completions/vhctl.$s; done"""
    generated = _generate(shell)
    assert "vhctl" in generated
    assert (ROOT / "completions" / f"vhctl.{shell}").read_text() == generated


def test_completion_answers_command_and_option_names() -> None:
    env = {
        **os.environ,
        "_VHCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": "vhctl make-ref --sh",
        "COMP_CWORD": "2",
    }
    code = "from vhctl.cli.app import app; app(prog_name='vhctl')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert "--shared" in done.stdout.split()
    env["COMP_WORDS"], env["COMP_CWORD"] = "vhctl va", "1"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["validate"]


def test_help_does_not_import_torch() -> None:
    code = "import sys; from vhctl.cli.app import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
