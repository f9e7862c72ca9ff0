"""Reading the checkpoints TRL 1.12 writes (made by TRL itself), and the pickle policy."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import TRL_LAYOUTS, make_trl_checkpoint, peft_base_folder, save_tiny_model

from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from vhctl.constants import PT_WEIGHTS_NAME
from vhctl.errors import UnsafeLoadError


@pytest.mark.parametrize("layout", TRL_LAYOUTS)
@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_loads_every_trl_layout(arch: str, layout: str, tmp_path) -> None:
    folder = tmp_path / "trl"
    head = make_trl_checkpoint(arch, folder, layout)
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead
    pickle = layout in ("bin", "peft")
    if pickle:
        with pytest.raises(UnsafeLoadError, match="allow"):
            cls.from_pretrained(str(folder))
    model = cls.from_pretrained(str(folder), allow_pickle=pickle)
    assert torch.equal(model.v_head.summary.weight, head.weight)
    assert torch.equal(model.v_head.summary.bias, head.bias)
    assert model.is_peft_model == (layout == "peft")
    # Saved again, it is a vhctl checkpoint that needs no pickle and keeps the head.
    model.save_pretrained(tmp_path / "vh")
    again = cls.from_pretrained(str(tmp_path / "vh"))
    assert torch.equal(again.v_head.summary.weight, head.weight)
    if layout != "peft":
        assert not (tmp_path / "vh" / PT_WEIGHTS_NAME).exists()


def test_peft_layout_base_is_named_by_adapter(tmp_path) -> None:
    folder = tmp_path / "trl"
    make_trl_checkpoint("gpt2", folder, "peft")
    assert peft_base_folder(folder).is_dir()


def test_pickle_base_is_refused_without_permission(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(save_tiny_model("gpt2", tmp_path / "safe"))
    folder = tmp_path / "bin"
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / PT_WEIGHTS_NAME)
    with pytest.raises(UnsafeLoadError):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(folder), allow_pickle=True)
    assert torch.equal(loaded.pretrained_model.lm_head.weight, model.lm_head.weight)
