"""Every file vhctl writes gets ``0666 & ~umask`` and every folder ``0777 & ~umask``, as ``cp`` gives.

safetensors creates files owner-only (0600): before this was fixed, a head written by ``wrap`` or a
model written by ``export --format seqcls`` could not be read by teammates on a shared cluster.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.checkpoints import assert_like_cp
from typer.testing import CliRunner

from vhctl.cli.app import app

UMASKS = (0o022, 0o027)


@pytest.fixture(params=UMASKS, ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def run(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_every_command_that_writes(tmp_path: Path, umask: int) -> None:
    from helpers.tiny_models import make_reward_adapter

    from vhctl._tiny import tiny_model_path

    ck = tmp_path / "ck"
    run("wrap", "vhctl:tiny", "--out", str(ck), "--init", "normal", "--seed", "0")
    assert_like_cp(ck, umask)
    run("make-ref", str(ck), "--shared", "1")
    run("make-ref", str(ck), "--out", str(tmp_path / "full-ref"))
    adapter = make_reward_adapter("gpt2", tmp_path / "adapter", tiny_model_path())
    run("attach-reward-adapter", str(ck), str(adapter))
    assert_like_cp(ck, umask)  # the nested reference and the adapter folder included
    assert_like_cp(tmp_path / "full-ref", umask)
    for fmt, extra in (
        ("trl", ()),
        ("openrlhf", ("--bias", "config")),
        ("seqcls", ("--bias", "config", "--pad-token", "eos")),
    ):
        run("export", str(ck), "--format", fmt, "--out", str(tmp_path / fmt), *extra)
        assert_like_cp(tmp_path / fmt, umask)
    run("wrap", str(tmp_path / "seqcls"), "--out", str(tmp_path / "back"))
    assert_like_cp(tmp_path / "back", umask)


def test_library_save_pretrained(tmp_path: Path, umask: int) -> None:
    from vhctl import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained("vhctl:tiny")
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert_like_cp(out, umask)


def test_wrap_link_leaves_the_users_files_alone(tmp_path: Path, umask: int) -> None:
    # Hard-linked base files are the user's: their mode is theirs (here owner-only), not changed.
    from helpers.tiny_models import save_tiny_model

    base = save_tiny_model("gpt2", tmp_path / "base")
    weights = base / "model.safetensors"
    os.chmod(weights, 0o600)
    out = tmp_path / "linked"
    run("wrap", str(base), "--out", str(out), "--link")
    assert os.path.samefile(weights, out / "model.safetensors")
    assert stat.S_IMODE(weights.stat().st_mode) == 0o600
    head = stat.S_IMODE((out / "value_head.safetensors").stat().st_mode)
    assert head == 0o666 & ~umask
