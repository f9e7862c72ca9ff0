"""CliRunner tests for wrap, make-ref, attach-reward-adapter, validate and info."""

from __future__ import annotations

import json

import pytest
from helpers.tiny_models import make_reward_adapter, make_trl_checkpoint, save_tiny_model
from typer.testing import CliRunner

from vhctl._version import __version__
from vhctl.cli.app import app
from vhctl.constants import MANIFEST_NAME, VALUE_HEAD_NAME

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def ckpt(tmp_path):
    out = tmp_path / "ck"
    result = run("wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def test_version_and_help() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"vhctl {__version__}"
    result = run("--help")
    assert result.exit_code == 0
    for command in ("wrap", "attach-reward-adapter", "make-ref", "score", "validate", "info", "push"):
        assert command in result.stdout


def test_wrap_json_report_and_options(tmp_path) -> None:
    out = tmp_path / "w"
    result = run(
        "wrap",
        "vhctl:tiny",
        "--out",
        str(out),
        "--init",
        "normal",
        "--std",
        "0.05",
        "--dropout",
        "0.2",
        "--seed",
        "3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["head_init"] == "normal" and report["model_type"] == "gpt2"
    assert VALUE_HEAD_NAME in report["files"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["value_head"]["std"] == 0.05 and manifest["value_head"]["dropout"] == 0.2
    again = tmp_path / "w2"
    assert (
        run(
            "wrap", "vhctl:tiny", "--out", str(again), "--init", "normal", "--std", "0.05", "--seed", "3"
        ).exit_code
        == 0
    )
    assert (out / VALUE_HEAD_NAME).read_bytes() == (again / VALUE_HEAD_NAME).read_bytes()


def test_wrap_trl_checkpoint_keeps_head(tmp_path) -> None:
    make_trl_checkpoint("gpt2", tmp_path / "trl", "safetensors")
    result = run("wrap", str(tmp_path / "trl"), "--out", str(tmp_path / "ck"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["head_init"] == "loaded"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["wrap", "vhctl:tiny", "--out", "{tmp}/x", "--init", "xavier"], 2, "unknown --init"),
        (["wrap", "vhctl:tiny", "--out", "{tmp}/x", "--init", "normal", "--std", "-1"], 2, "--std"),
        (["wrap", "vhctl:tiny", "--out", "{tmp}/x", "--dropout", "1.5"], 2, "--dropout"),
        (["wrap", "vhctl:tiny", "--out", "{tmp}/x", "--dtype", "int8"], 2, "--dtype"),
        (["wrap", "{tmp}/nope", "--out", "{tmp}/x"], 1, "nope"),
        (["wrap", "{tmp}", "--out", "{tmp}-x"], 1, "config.json"),
        (["wrap", "{tmp}", "--out", "{tmp}/x"], 2, "inside the source"),
        (["make-ref", "{tmp}/nope"], 1, "nope"),
        (["validate", "{tmp}/nope"], 1, "nope"),
        (["info", "{tmp}"], 1, "vhctl.json"),
        (["wrap", "vhctl:tiny"], 2, "--out"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, args, code, needle) -> None:
    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_existing_out_needs_force(ckpt) -> None:
    before = (ckpt / VALUE_HEAD_NAME).read_bytes()
    result = run("wrap", "vhctl:tiny", "--out", str(ckpt), "--seed", "9")
    assert result.exit_code == 1 and "--force" in result.stderr
    assert (ckpt / VALUE_HEAD_NAME).read_bytes() == before
    result = run("wrap", "vhctl:tiny", "--out", str(ckpt), "--seed", "9", "--force")
    assert result.exit_code == 0
    assert (ckpt / VALUE_HEAD_NAME).read_bytes() != before


def test_verbose_shows_traceback(tmp_path) -> None:
    result = run("-v", "wrap", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_make_ref_validate_info(ckpt) -> None:
    result = run("make-ref", str(ckpt), "--shared", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_shared_layers"] == 2 and report["shared_tensors"] > 0
    assert (ckpt / "ref" / MANIFEST_NAME).is_file()
    result = run("make-ref", str(ckpt), "--shared", "7")
    assert result.exit_code == 2 and "layers" in result.stderr
    result = run(
        "make-ref", str(ckpt), "--shared", "1", "--pattern", "blocks.{layer}", "--out", str(ckpt.parent / "r")
    )
    assert result.exit_code == 2 and "pattern" in result.stderr

    result = run("validate", str(ckpt), "--deep", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    result = run("validate", str(ckpt))
    assert result.exit_code == 0 and "valid" in result.stderr

    result = run("info", str(ckpt), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["kind"] == "policy" and data["model_type"] == "gpt2"
    result = run("info", str(ckpt))
    assert result.exit_code == 0 and "gpt2" in result.stdout


def test_validate_reports_corruption_exit_1(ckpt) -> None:
    data = bytearray((ckpt / VALUE_HEAD_NAME).read_bytes())
    data[-1] ^= 0xFF
    (ckpt / VALUE_HEAD_NAME).write_bytes(bytes(data))
    result = run("validate", str(ckpt), "--json")
    assert result.exit_code == 1
    codes = {p["code"] for p in json.loads(result.stdout)["problems"]}
    assert "hash-mismatch" in codes
    result = run("validate", str(ckpt))
    assert result.exit_code == 1 and "hash-mismatch" in result.stdout


def test_attach_reward_adapter(tmp_path) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base)
    ck = tmp_path / "ck"
    assert run("wrap", str(base), "--out", str(ck)).exit_code == 0
    result = run("attach-reward-adapter", str(ck), str(adapter), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == "adapters/reward_adapter"
    assert (ck / "adapters" / "reward_adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((ck / MANIFEST_NAME).read_text())
    assert "reward_adapter" in manifest["adapters"]
    assert "adapters/reward_adapter/adapter_model.safetensors" in manifest["files"]
    assert run("validate", str(ck), "--deep").exit_code == 0
    result = run("attach-reward-adapter", str(ck), str(adapter))
    assert result.exit_code == 1 and "--force" in result.stderr
    assert run("attach-reward-adapter", str(ck), str(adapter), "--force").exit_code == 0
    result = run("attach-reward-adapter", str(ck), str(adapter), "--name", "../evil")
    assert result.exit_code == 1 and "adapter name" in result.stderr


def test_attach_refuses_adapter_for_another_base(tmp_path) -> None:
    other = save_tiny_model("llama", tmp_path / "llama")
    adapter = make_reward_adapter("llama", tmp_path / "rm", other)
    ck = tmp_path / "ck"
    assert run("wrap", "vhctl:tiny", "--out", str(ck)).exit_code == 0
    before = (ck / MANIFEST_NAME).read_bytes()
    result = run("attach-reward-adapter", str(ck), str(adapter))
    assert result.exit_code == 1, result.output
    assert "adapter" in result.stderr and "Traceback" not in result.output
    assert (ck / MANIFEST_NAME).read_bytes() == before
    assert not (ck / "adapters" / "reward_adapter").exists()
