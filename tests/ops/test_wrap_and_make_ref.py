"""File-level wrap and make-ref: byte-level base copies, split heads, lean references."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers.tiny_models import make_trl_checkpoint, save_tiny_model
from safetensors import safe_open

from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from vhctl.constants import (
    MANIFEST_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TINY_MODEL_NAME,
    VALUE_HEAD_NAME,
)
from vhctl.errors import (
    DestinationExistsError,
    IntegrityError,
    LayerPatternError,
    UnsupportedModelError,
    UsageError,
)
from vhctl.modeling import load_checkpoint
from vhctl.ops.make_ref import make_reference
from vhctl.ops.wrap import wrap_model


def test_wrap_copies_base_bytes_and_same_seed_gives_same_head(tmp_path) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    a = wrap_model(str(src), tmp_path / "a", init="normal", std=0.1, seed=7)
    wrap_model(str(src), tmp_path / "b", init="normal", std=0.1, seed=7)
    wrap_model(str(src), tmp_path / "c", init="normal", std=0.1, seed=8)
    assert (tmp_path / "a" / SAFE_WEIGHTS_NAME).read_bytes() == (src / SAFE_WEIGHTS_NAME).read_bytes()
    head = (tmp_path / "a" / VALUE_HEAD_NAME).read_bytes()
    assert head == (tmp_path / "b" / VALUE_HEAD_NAME).read_bytes()
    assert head != (tmp_path / "c" / VALUE_HEAD_NAME).read_bytes()
    assert a.head_init == "normal" and (tmp_path / "a" / "tokenizer.json").is_file()
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["value_head"] == {
        "dropout": 0.1,
        "dtype": "float32",
        "file": VALUE_HEAD_NAME,
        "hidden_size": 32,
        "init": "normal",
        "seed": 7,
        "std": 0.1,
    }
    model = load_checkpoint(tmp_path / "a")
    with safe_open(str(tmp_path / "a" / VALUE_HEAD_NAME), "pt") as f:
        assert torch.equal(model.v_head.summary.weight, f.get_tensor("v_head.summary.weight"))
    assert model.v_head.summary.bias.item() == 0


def test_wrap_link_hard_links_base(tmp_path) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    wrap_model(str(src), tmp_path / "l", link=True)
    assert os.stat(tmp_path / "l" / SAFE_WEIGHTS_NAME).st_ino == os.stat(src / SAFE_WEIGHTS_NAME).st_ino


@pytest.mark.parametrize("layout", ["safetensors", "sharded"])
def test_wrap_splits_out_a_trl_head_and_keeps_it(layout: str, tmp_path) -> None:
    src = tmp_path / "trl"
    head = make_trl_checkpoint("gpt2", src, layout)
    result = wrap_model(str(src), tmp_path / "ck", init="normal")
    assert result.head_init == "loaded" and result.head_from.startswith("trl")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "ck"))
    assert torch.equal(model.v_head.summary.weight, head.weight)
    assert torch.equal(model.v_head.summary.bias, head.bias)
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    if layout == "sharded":
        weight_map = json.loads((tmp_path / "ck" / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
        assert not any("v_head" in k for k in weight_map)


def test_wrap_dtype_conversion_and_seq2seq(tmp_path) -> None:
    src = save_tiny_model("t5", tmp_path / "t5")
    wrap_model(str(src), tmp_path / "ck", dtype="bfloat16")
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(str(tmp_path / "ck"))
    assert next(model.pretrained_model.parameters()).dtype == torch.bfloat16
    assert json.loads((tmp_path / "ck" / MANIFEST_NAME).read_text())["architecture"] == "seq2seq-lm"


def test_wrap_errors(tmp_path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    src = save_tiny_model("gpt2", tmp_path / "base")
    wrap_model(str(src), tmp_path / "ck")
    before = (tmp_path / "ck" / VALUE_HEAD_NAME).read_bytes()
    with pytest.raises(DestinationExistsError):
        wrap_model(str(src), tmp_path / "ck", seed=1)
    assert (tmp_path / "ck" / VALUE_HEAD_NAME).read_bytes() == before
    wrap_model(str(src), tmp_path / "ck", seed=1, force=True)
    assert (tmp_path / "ck" / VALUE_HEAD_NAME).read_bytes() != before
    with pytest.raises(UsageError):
        wrap_model(str(src), tmp_path / "x", init="xavier")
    with pytest.raises(UsageError):
        wrap_model(str(src), tmp_path / "x", init="normal", std=-1)
    with pytest.raises(UsageError):
        wrap_model(str(src), src / "inside")
    bert = BertForMaskedLM(
        BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="encoder-only"):
        wrap_model(str(tmp_path / "bert"), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".vhctl-")]
    assert leftovers == []


def test_wrap_tiny_model_by_name(tmp_path) -> None:
    result = wrap_model(TINY_MODEL_NAME, tmp_path / "ck", init="normal", seed=0)
    assert result.model_type == "gpt2"
    assert (
        json.loads((tmp_path / "ck" / MANIFEST_NAME).read_text())["base_model"]["source"] == TINY_MODEL_NAME
    )


@pytest.mark.parametrize("shared", [None, 0, 1])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_make_ref_stores_only_unshared_and_loads_same_values(arch: str, shared, tmp_path) -> None:
    src = save_tiny_model(arch, tmp_path / "base")
    wrap_model(str(src), tmp_path / "ck", init="normal", seed=1, dropout=0.0)
    result = make_reference(tmp_path / "ck", num_shared_layers=shared)
    ref_dir = tmp_path / "ck" / "ref"
    assert result.out == ref_dir
    with safe_open(str(ref_dir / SAFE_WEIGHTS_NAME), "pt") as f:
        stored = set(f.keys())
    with safe_open(str(src / SAFE_WEIGHTS_NAME), "pt") as f:
        everything = set(f.keys())
    manifest = json.loads((ref_dir / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "reference" and manifest["reference"]["policy"] == ".."
    shared_names = set(manifest["reference"]["shared_tensors"])
    assert stored | shared_names == everything and not stored & shared_names
    assert bool(shared_names) == (shared is not None)
    policy_manifest = json.loads((tmp_path / "ck" / MANIFEST_NAME).read_text())
    assert policy_manifest["references"] == ["ref"]
    if shared is not None:
        assert policy_manifest["frozen"]["num_shared_layers"] == shared
    policy = load_checkpoint(tmp_path / "ck")
    ref = load_checkpoint(ref_dir)
    policy.eval()
    ref.eval()
    batch = {"input_ids": torch.randint(1, 200, (2, 5))}
    if arch == "t5":
        batch["decoder_input_ids"] = torch.randint(1, 200, (2, 3))
    with torch.no_grad():
        assert torch.equal(policy(**batch)[2], ref(**batch)[2])
    if shared is not None:
        frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
        assert frozen, "the policy loads with the shared layers frozen"


def test_reference_refuses_a_policy_whose_shared_tensors_changed(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    src = save_tiny_model("gpt2", tmp_path / "base")
    wrap_model(str(src), tmp_path / "ck")
    make_reference(tmp_path / "ck", num_shared_layers=1)
    weights = load_file(str(tmp_path / "ck" / SAFE_WEIGHTS_NAME))
    weights["transformer.h.0.mlp.c_fc.weight"] += 1.0
    save_file(weights, str(tmp_path / "ck" / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(IntegrityError, match="shared tensors changed"):
        load_checkpoint(tmp_path / "ck" / "ref")


def test_make_ref_errors(tmp_path) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    wrap_model(str(src), tmp_path / "ck")
    with pytest.raises(LayerPatternError, match="from 0 to 1"):
        make_reference(tmp_path / "ck", num_shared_layers=2)
    with pytest.raises(LayerPatternError):
        make_reference(tmp_path / "ck", num_shared_layers=1, pattern="nope.{layer}")
    assert not (tmp_path / "ck" / "ref").exists()
    make_reference(tmp_path / "ck", num_shared_layers=1, out=tmp_path / "elsewhere")
    manifest = json.loads((tmp_path / "elsewhere" / MANIFEST_NAME).read_text())
    assert manifest["reference"]["policy"] == "../ck"
    assert load_checkpoint(tmp_path / "elsewhere") is not None
