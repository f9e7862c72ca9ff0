"""One ``vhctl score`` run resolves its checkpoint and reads its manifest once, and refuses what would
score silently wrong (no value head, a swapped head)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vhctl.checkpoint.manifest import Manifest
from vhctl.cli.app import app
from vhctl.io import resolve


def run(*args: str, input: str = "") -> object:
    return CliRunner().invoke(app, list(args), input=input)


def test_score_resolves_and_reads_the_manifest_once(tiny_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    from helpers.tiny_models import make_reward_adapter

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", ck, seed=3)
    assert run("attach-reward-adapter", str(ck), str(adapter)).exit_code == 0

    resolved: list[Path] = []
    reads: list[Path] = []
    real_init = resolve.ResolvedModel.__init__
    real_read = Manifest.read.__func__

    def counting_init(self, path, *args, **kwargs):  # every resolution builds one ResolvedModel
        resolved.append(Path(path).resolve())
        real_init(self, path, *args, **kwargs)

    def counting_read(cls, folder):
        reads.append(Path(folder).resolve())
        return real_read(cls, folder)

    monkeypatch.setattr(resolve.ResolvedModel, "__init__", counting_init)
    monkeypatch.setattr(Manifest, "read", classmethod(counting_read))
    result = run("score", str(ck), "--reward", "--per-token", input="hello there\n")
    assert result.exit_code == 0, result.output
    assert "reward" in json.loads(result.stdout.splitlines()[0])
    assert resolved.count(ck.resolve()) == 1, resolved
    assert reads.count(ck.resolve()) == 1, reads


def test_a_model_without_a_value_head_is_refused() -> None:
    result = run("score", "vhctl:tiny", input="hello\n")
    assert result.exit_code == 1
    assert "no value head" in result.stderr and "vhctl wrap" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize("change", ["bytes", "swap"])
def test_a_head_the_manifest_does_not_vouch_for_is_refused(
    tiny_ckpt: Path, tmp_path: Path, change: str
) -> None:
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    head = ck / "value_head.safetensors"
    tensors = load_file(str(head))
    if change == "bytes":  # same size, other values
        tensors["v_head.summary.bias"] = tensors["v_head.summary.bias"] + 1.0
        save_file(tensors, str(head), metadata={"format": "pt"})
        code = "hash-mismatch"
    else:  # another head, another size
        tensors["extra"] = tensors["v_head.summary.bias"].clone()
        save_file(tensors, str(head), metadata={"format": "pt"})
        code = "size-mismatch"
    result = run("score", str(ck), input="hello\n")
    assert result.exit_code == 1, result.output
    assert code in result.stderr and result.stdout == ""
