"""``vhctl export`` and ``vhctl wrap --init-from-reward`` through the CLI; the key-map table."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.formats import head_of, make_seqcls, set_head
from helpers.tiny_models import make_reward_adapter, make_trl_checkpoint, save_tiny_model
from typer.testing import CliRunner

from vhctl.checkpoint.manifest import Manifest
from vhctl.cli.app import app
from vhctl.constants import V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import CheckpointError, NotAModelError
from vhctl.formats import keymaps, read_reward_head

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def ckpt(tmp_path):
    make_trl_checkpoint("gpt2", tmp_path / "trl", "safetensors")
    out = tmp_path / "ck"
    result = run("wrap", str(tmp_path / "trl"), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_export_json_report_and_hint(ckpt, tmp_path) -> None:
    out = tmp_path / "rm"
    result = run("export", str(ckpt), "--format", "seqcls", "--out", str(out), "--pad-token", "eos", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "seqcls" and report["bias"] == "norm"
    assert report["norm_bias_key"] == "transformer.ln_f.bias" and "model.safetensors" in report["files"]
    assert "folded" in result.stderr and "AutoModelForSequenceClassification" in result.stderr
    assert (out / "config.json").is_file()


def test_export_every_format_writes_no_pickle(ckpt, tmp_path) -> None:
    for fmt in keymaps.EXPORT_FORMATS:
        out = tmp_path / f"export-{fmt}"
        pad = ("--pad-token", "eos") if fmt == keymaps.SEQCLS else ()  # the tiny tokenizer pads with EOS
        result = run("export", str(ckpt), "-f", fmt, "-o", str(out), *pad)
        assert result.exit_code == 0, result.output
        assert result.stdout == ""  # data only with --json; messages go to stderr
        assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]


def test_export_errors_are_one_line_with_exit_codes(ckpt, tmp_path) -> None:
    out = tmp_path / "out"
    cases = [
        (["export", str(ckpt), "-f", "onnx", "-o", str(out)], 2, "unknown export format"),
        (["export", str(ckpt), "-f", "seqcls", "-o", str(out), "--bias", "mean"], 2, "--bias mean"),
        (["export", str(ckpt), "-f", "trl", "-o", str(out), "--bias", "config"], 2, "--bias"),
        (["export", str(ckpt), "-f", "seqcls", "-o", str(out), "--keep-shards"], 2, "--keep-shards"),
        (
            ["export", str(ckpt), "-f", "trl", "-o", str(out), "--value-head-prefix", "score"],
            2,
            "openrlhf only",
        ),
        (["export", str(tmp_path / "trl"), "-f", "trl", "-o", str(out)], 1, "not a vhctl checkpoint"),
        (["export", str(ckpt), "-f", "trl", "-o", str(ckpt / "inside")], 2, "inside"),
    ]
    for args, code, text in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert text in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not out.exists()
    assert run("export", str(ckpt), "-f", "trl", "-o", str(out)).exit_code == 0
    again = run("export", str(ckpt), "-f", "trl", "-o", str(out))
    assert again.exit_code == 1 and "--force" in again.stderr
    assert run("export", str(ckpt), "-f", "trl", "-o", str(out), "--force").exit_code == 0


def test_export_refuses_a_bias_it_cannot_keep_and_leaves_nothing(tmp_path) -> None:
    make_trl_checkpoint("llama", tmp_path / "trl", "safetensors")
    assert run("wrap", str(tmp_path / "trl"), "-o", str(tmp_path / "ck")).exit_code == 0
    result = run("export", str(tmp_path / "ck"), "-f", "openrlhf", "-o", str(tmp_path / "o"))
    assert result.exit_code == 1 and "--bias mean" in result.stderr and "--bias config" in result.stderr
    assert not (tmp_path / "o").exists() and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".vhctl")
    ]


def test_wrap_init_from_reward_seqcls_and_peft_adapter(tmp_path) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base")
    rm = make_seqcls("gpt2", tmp_path / "rm", seed=5)
    result = run(
        "wrap",
        str(base),
        "-o",
        str(tmp_path / "critic"),
        "--init-from-reward",
        str(tmp_path / "rm"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["head_from"] == "reward:seqcls"
    head = head_of(tmp_path / "critic")
    assert torch.equal(head[V_HEAD_WEIGHT], rm.score.weight) and head[V_HEAD_BIAS].item() == 0
    manifest = Manifest.read(tmp_path / "critic")
    assert manifest.extra["value_head_from"]["format"] == "seqcls"
    assert manifest.value_head.init == "loaded"

    adapter = make_reward_adapter("gpt2", tmp_path / "adapter", base, seed=2)
    result = run("wrap", str(base), "-o", str(tmp_path / "critic2"), "--init-from-reward", str(adapter))
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        score = next(handle.get_tensor(k) for k in handle.keys() if "score" in k and k.endswith("weight"))
    assert torch.equal(head_of(tmp_path / "critic2")[V_HEAD_WEIGHT], score)


def test_init_from_reward_checks_hidden_size_and_head(tmp_path) -> None:
    make_seqcls("gpt_neox", tmp_path / "rm64")  # hidden 64
    base = save_tiny_model("gpt2", tmp_path / "base")  # hidden 32
    result = run("wrap", str(base), "-o", str(tmp_path / "x"), "--init-from-reward", str(tmp_path / "rm64"))
    assert result.exit_code == 1 and "hidden size 64" in result.stderr and "32" in result.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(CheckpointError, match="hidden size 64"):
        read_reward_head(tmp_path / "rm64", hidden_size=32)
    with pytest.raises(NotAModelError, match="no reward head"):
        read_reward_head(base, hidden_size=32)


def test_init_from_reward_takes_a_vhctl_critic_head_with_its_bias(ckpt, tmp_path) -> None:
    set_head(ckpt, bias=-2.0)
    head = read_reward_head(ckpt, hidden_size=32)
    assert head.format == "vhctl" and head.bias.item() == -2.0


def test_keymap_table_lists_every_format() -> None:
    table = keymaps.markdown_table()
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(keymaps.KEYMAPS)
    for name in (*keymaps.IMPORT_FORMATS, "vhctl"):
        assert f"| `{name}` |" in table
    assert all(line.count("|") == 9 for line in lines)
