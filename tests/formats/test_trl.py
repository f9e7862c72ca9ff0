"""TRL 1.12 interop, checked against trl itself in both directions (causal, seq2seq, PEFT)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.formats import TOL, folder_tensors, head_of, input_ids, trl_checkpoint, vhctl_values
from helpers.tiny_models import _trl_class, make_trl_checkpoint, save_tiny_model

from vhctl.constants import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.formats.trl import TRL_SHARDED_NOTE
from vhctl.ops.export import export_checkpoint
from vhctl.ops.wrap import wrap_model


def _trl_values(model, arch: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if arch in ("t5", "bart"):
            return model.eval()(input_ids=ids, decoder_input_ids=ids)[2]
        return model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))[2]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_trl_round_trip_is_exact_and_trl_loads_the_export(arch: str, tmp_path) -> None:
    # TRL -> vhctl (wrap) -> TRL (export): TRL's own from_pretrained reads the same head and values.
    ck = trl_checkpoint(arch, tmp_path)
    out = tmp_path / "trl-out"
    result = export_checkpoint(ck, "trl", out)
    assert result.bias == "native" and SAFE_WEIGHTS_NAME in result.files and not result.notes
    assert not list(out.glob("*.bin")) and not (out / SAFE_WEIGHTS_INDEX_NAME).exists()

    trl_model = _trl_class(arch).from_pretrained(str(out))
    head = head_of(ck)
    assert torch.equal(trl_model.v_head.summary.weight, head[V_HEAD_WEIGHT])
    assert torch.equal(trl_model.v_head.summary.bias, head[V_HEAD_BIAS])
    ids = input_ids()
    assert torch.allclose(_trl_values(trl_model, arch, ids), vhctl_values(ck, ids), atol=TOL, rtol=0)

    # And back: the exported folder wraps into the same checkpoint tensors.
    again = tmp_path / "again"
    assert wrap_model(str(out), again).head_from == "trl-safetensors"
    assert folder_tensors(again).keys() == folder_tensors(ck).keys()
    for key, tensor in folder_tensors(ck).items():
        assert torch.equal(folder_tensors(again)[key], tensor), key
    assert head_of(again).keys() == head.keys()
    assert all(torch.equal(head_of(again)[k], v) for k, v in head.items())


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_trl_layouts_import_exactly(layout: str, tmp_path) -> None:
    src = tmp_path / "trl"
    expected = make_trl_checkpoint("gpt2", src, layout)
    result = wrap_model(str(src), tmp_path / "ck", allow_pickle=layout == "bin")
    assert result.head_from.startswith("trl")
    head = head_of(tmp_path / "ck")
    assert torch.equal(head[V_HEAD_WEIGHT], expected.weight) and torch.equal(head[V_HEAD_BIAS], expected.bias)


def test_sharded_checkpoint_exports_to_one_file_by_default_and_keeps_shards_on_request(tmp_path) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base", max_shard_size="60KB")
    ck = tmp_path / "ck"
    wrap_model(str(base), ck, init="normal", seed=1)
    assert (ck / SAFE_WEIGHTS_INDEX_NAME).is_file()

    single = export_checkpoint(ck, "trl", tmp_path / "one")
    assert (
        single.files.count(SAFE_WEIGHTS_NAME) == 1
        and not (tmp_path / "one" / SAFE_WEIGHTS_INDEX_NAME).exists()
    )
    trl_model = _trl_class("gpt2").from_pretrained(str(tmp_path / "one"))
    assert torch.equal(trl_model.v_head.summary.weight, head_of(ck)[V_HEAD_WEIGHT])

    sharded = export_checkpoint(ck, "trl", tmp_path / "shards", keep_shards=True)
    assert sharded.notes == [TRL_SHARDED_NOTE]
    index = json.loads((tmp_path / "shards" / SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert V_HEAD_WEIGHT in index["weight_map"] and V_HEAD_BIAS in index["weight_map"]
    assert len(set(index["weight_map"].values())) > 1
    # vhctl reads the sharded TRL layout back exactly.
    wrap_model(str(tmp_path / "shards"), tmp_path / "back")
    assert torch.equal(head_of(tmp_path / "back")[V_HEAD_WEIGHT], head_of(ck)[V_HEAD_WEIGHT])
    assert folder_tensors(tmp_path / "back").keys() == folder_tensors(ck).keys()


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_peft_policy_exports_for_trl_without_a_pickle(arch: str, tmp_path) -> None:
    from peft import PeftModel

    from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    src = tmp_path / "trl-peft"
    expected = make_trl_checkpoint(arch, src, "peft")
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead
    cls.from_pretrained(str(src), allow_pickle=True).save_pretrained(tmp_path / "vh")

    out = tmp_path / "out"
    result = export_checkpoint(tmp_path / "vh", "trl", out)
    assert "pickle" in result.notes[0] and not list(out.glob("*.bin"))
    trl_model = _trl_class(arch).from_pretrained(str(out))
    assert isinstance(trl_model.pretrained_model, PeftModel)
    assert torch.equal(trl_model.v_head.summary.weight, expected.weight)
    assert torch.equal(trl_model.v_head.summary.bias, expected.bias)
    ids = input_ids()
    vh = cls.from_pretrained(str(tmp_path / "vh")).eval()
    with torch.no_grad():
        kwargs = {"decoder_input_ids": ids} if arch == "t5" else {"attention_mask": torch.ones_like(ids)}
        mine = vh(input_ids=ids, **kwargs)[2]
    assert torch.allclose(_trl_values(trl_model, arch, ids), mine, atol=TOL, rtol=0)


def test_reference_with_shared_layers_exports_complete(tmp_path) -> None:
    from vhctl.ops.make_ref import make_reference

    ck = trl_checkpoint("gpt2", tmp_path)
    make_reference(ck, num_shared_layers=1)
    out = tmp_path / "ref-trl"
    export_checkpoint(ck / "ref", "trl", out)
    trl_model = _trl_class("gpt2").from_pretrained(str(out))
    ids = input_ids()
    assert torch.allclose(
        _trl_values(trl_model, "gpt2", ids), vhctl_values(ck / "ref", ids), atol=TOL, rtol=0
    )
    exported, policy = folder_tensors(out), folder_tensors(ck)
    assert all(torch.equal(exported[k], v) for k, v in policy.items())
