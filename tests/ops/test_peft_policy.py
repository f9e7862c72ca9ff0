"""TRL's PEFT value-head layout through the CLI (issue #13, item 3), checked against trl 1.12 itself.

TRL saves a PEFT value-head model as the adapter and the head alone in ``pytorch_model.bin``;
``vhctl wrap --allow-pickle`` turns it into a vhctl PEFT policy checkpoint (adapter at the root,
head in ``value_head.safetensors``), and ``vhctl export --format trl`` gives TRL a folder it loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.formats import head_of, input_ids
from helpers.tiny_models import (
    _trl_class,
    make_trl_checkpoint,
    peft_base_folder,
    save_tiny_model,
    tiny_tokenizer,
)
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from vhctl.cli.app import app
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    MANIFEST_NAME,
    PT_WEIGHTS_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)

runner = CliRunner()
# TRL and vhctl run the same modules on the same weights: the values agree to the last bits; the
# issue asks for 1e-5 (measured: 0.0 for gpt2 and t5 on the CPU).
TOL = 1e-5


def _cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def _values(model, arch: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if arch == "t5":
            return model.eval()(input_ids=ids, decoder_input_ids=ids)[2]
        return model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))[2]


def _vhctl_class(arch: str):
    return AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_trl_peft_layout_wraps_validates_and_exports_back(arch: str, tmp_path: Path) -> None:
    from peft import PeftModel

    src = tmp_path / "trl"
    expected = make_trl_checkpoint(arch, src, "peft")
    ck = tmp_path / "ck"

    # The head is a pickle: the usual refusal, nothing written.
    refused = _cli("wrap", str(src), "--out", str(ck))
    assert refused.exit_code == 1, refused.output
    assert "pickle" in refused.stderr and "--allow-pickle" in refused.stderr
    assert "Traceback" not in refused.output and not ck.exists()

    done = _cli("wrap", str(src), "--out", str(ck), "--allow-pickle", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["head_from"] == "trl-peft" and report["head_init"] == "loaded"
    assert not list(ck.glob("*.bin")) and not (ck / "config.json").exists()
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME):
        assert (ck / name).read_bytes() == (src / name).read_bytes(), name
    head = head_of(ck)
    assert torch.equal(head[V_HEAD_WEIGHT], expected.weight) and torch.equal(head[V_HEAD_BIAS], expected.bias)
    manifest = json.loads((ck / MANIFEST_NAME).read_text())
    assert manifest["extra"]["peft_policy"] == {"adapter_config": ADAPTER_CONFIG_NAME, "peft_type": "LORA"}
    assert manifest["base_model"]["source"] == str(peft_base_folder(src))
    assert manifest["model_type"] == arch and manifest["kind"] == "policy"

    checked = _cli("validate", str(ck), "--deep", "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["problems"] == []

    # vhctl's values from the converted checkpoint equal TRL's from its own folder.
    ids = input_ids()
    trl_values = _values(_trl_class(arch).from_pretrained(str(src)), arch, ids)
    mine = _values(_vhctl_class(arch).from_pretrained(str(ck)), arch, ids)
    assert (trl_values - mine).abs().max().item() <= TOL

    # Exported back, TRL 1.12 loads it (a PeftModel inside) and gives the same values.
    out = tmp_path / "trl-out"
    exported = _cli("export", str(ck), "--format", "trl", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    assert not list(out.glob("*.bin"))
    back = _trl_class(arch).from_pretrained(str(out))
    assert isinstance(back.pretrained_model, PeftModel)
    assert torch.equal(back.v_head.summary.weight, expected.weight)
    assert torch.equal(back.v_head.summary.bias, expected.bias)
    assert (_values(back, arch, ids) - trl_values).abs().max().item() <= TOL


def test_scores_of_the_converted_checkpoint_equal_trls_forward(tmp_path: Path) -> None:
    src = tmp_path / "trl"
    make_trl_checkpoint("gpt2", src, "peft")
    ck = tmp_path / "ck"
    assert _cli("wrap", str(src), "--out", str(ck), "--allow-pickle").exit_code == 0
    lines = ["The cat sat on the mat.", "Hello there, general Kenobi", "x"]
    done = _cli("score", str(ck), input="".join(f"{line}\n" for line in lines))
    assert done.exit_code == 0, done.output
    scored = [json.loads(row)["value"] for row in done.stdout.splitlines()]
    trl_model = _trl_class("gpt2").from_pretrained(str(src)).eval()
    tokenizer = tiny_tokenizer()
    for line, value in zip(lines, scored, strict=True):
        ids = torch.tensor([tokenizer(line)["input_ids"]])
        with torch.no_grad():
            expected = trl_model(input_ids=ids, attention_mask=torch.ones_like(ids))[2][0, -1].item()
        assert abs(value - expected) <= TOL, (line, value, expected)


def test_the_trl_export_of_a_peft_policy_wraps_again_without_a_pickle(tmp_path: Path) -> None:
    src = tmp_path / "trl"
    expected = make_trl_checkpoint("gpt2", src, "peft")
    assert _cli("wrap", str(src), "--out", str(tmp_path / "ck"), "--allow-pickle").exit_code == 0
    assert (
        _cli("export", str(tmp_path / "ck"), "--format", "trl", "--out", str(tmp_path / "out")).exit_code == 0
    )
    again = _cli("wrap", str(tmp_path / "out"), "--out", str(tmp_path / "again"))  # head in model.safetensors
    assert again.exit_code == 0, again.output
    assert torch.equal(head_of(tmp_path / "again")[V_HEAD_WEIGHT], expected.weight)


def test_peft_policy_options_that_do_not_apply(tmp_path: Path) -> None:
    src = tmp_path / "trl"
    make_trl_checkpoint("gpt2", src, "peft")
    done = _cli("wrap", str(src), "--out", str(tmp_path / "x"), "--allow-pickle", "--dtype", "bf16")
    assert done.exit_code == 2 and "--dtype" in done.stderr and not (tmp_path / "x").exists()
    done = _cli("wrap", str(src), "--out", str(tmp_path / "y"), "--allow-pickle", "--seed", "3")
    assert done.exit_code == 0 and "did nothing" in done.stderr


def test_an_adapter_without_a_head_is_still_not_a_model(tmp_path: Path) -> None:
    src = tmp_path / "trl"
    make_trl_checkpoint("gpt2", src, "peft")
    (src / PT_WEIGHTS_NAME).unlink()
    done = _cli("wrap", str(src), "--out", str(tmp_path / "x"), "--allow-pickle")
    assert done.exit_code == 1 and "PEFT adapter, not a model" in done.stderr
    assert "Traceback" not in done.output and not (tmp_path / "x").exists()


def test_a_missing_base_is_named(tmp_path: Path) -> None:
    src = tmp_path / "trl"
    make_trl_checkpoint("gpt2", src, "peft")
    config = json.loads((src / ADAPTER_CONFIG_NAME).read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (src / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    done = _cli("wrap", str(src), "--out", str(tmp_path / "x"), "--allow-pickle")
    assert done.exit_code == 1, done.output
    assert "base model" in done.stderr and "gone" in done.stderr and "Traceback" not in done.output
    assert not (tmp_path / "x").exists()


def test_the_base_is_resolved_by_hub_id(hub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    src = tmp_path / "trl"
    expected = make_trl_checkpoint("gpt2", src, "peft")
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("tester/base")
    api.upload_folder(repo_id="tester/base", folder_path=str(save_tiny_model("gpt2", tmp_path / "hub-base")))
    config = json.loads((src / ADAPTER_CONFIG_NAME).read_text())
    config["base_model_name_or_path"] = "tester/base"
    (src / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))

    done = _cli("wrap", str(src), "--out", str(tmp_path / "ck"), "--allow-pickle")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "ck" / MANIFEST_NAME).read_text())
    assert manifest["base_model"] == {"source": "tester/base", "revision": hub.head("tester/base")}
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "ck"))
    assert model.is_peft_model and torch.equal(model.v_head.summary.weight, expected.weight)
    assert (tmp_path / "ck" / VALUE_HEAD_NAME).is_file()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_converted_files_get_the_modes_cp_gives(tmp_path: Path, mask: int) -> None:
    from helpers.checkpoints import assert_like_cp

    src = tmp_path / "trl"
    make_trl_checkpoint("gpt2", src, "peft")  # peft writes adapter_model.safetensors owner-only (0600)
    old = os.umask(mask)
    try:
        assert _cli("wrap", str(src), "--out", str(tmp_path / "ck"), "--allow-pickle").exit_code == 0
        assert (
            _cli("export", str(tmp_path / "ck"), "--format", "trl", "--out", str(tmp_path / "out")).exit_code
            == 0
        )
    finally:
        os.umask(old)
    assert_like_cp(tmp_path / "ck", mask)
    assert_like_cp(tmp_path / "out", mask)
