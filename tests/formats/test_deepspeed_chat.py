"""DeepSpeed-Chat reward/critic import (pickle layout, both spellings of its backbone prefix)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.formats import TOL, head_of, input_ids, vhctl_values
from helpers.tiny_models import tiny_config

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import CONFIG_NAME, PT_WEIGHTS_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import UnsafeLoadError
from vhctl.ops.wrap import wrap_model


def make_deepspeed_chat(arch: str, folder, *, prefix: str = "rwtranrsformer", safetensors: bool = False):
    """A DeepSpeed-Chat RewardModel as ``save_hf_format`` writes it: ``torch.save`` of a state dict
    with the AutoModel backbone under ``rwtranrsformer.`` and ``v_head.weight`` (no bias)."""
    from transformers import AutoModel

    config = tiny_config(arch)
    torch.manual_seed(0)
    backbone = AutoModel.from_config(config).eval()
    width = getattr(config, "word_embed_proj_dim", None) or config.hidden_size
    head = torch.randn(1, width) / 4
    state = {f"{prefix}.{k}": v.clone() for k, v in backbone.state_dict().items()}
    state["v_head.weight"] = head
    folder.mkdir(parents=True)
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / PT_WEIGHTS_NAME)
    data = config.to_dict()
    data["end_of_conversation_token"] = "<|endoftext|>"
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    return backbone, head


@pytest.mark.parametrize(("arch", "prefix"), [("opt", "rwtranrsformer"), ("llama", "rwtransformer")])
def test_import_deepspeed_chat_pickle(arch: str, prefix: str, tmp_path) -> None:
    backbone, head = make_deepspeed_chat(arch, tmp_path / "rm", prefix=prefix)
    with pytest.raises(UnsafeLoadError, match="allow"):
        wrap_model(str(tmp_path / "rm"), tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    result = wrap_model(str(tmp_path / "rm"), tmp_path / "ck", allow_pickle=True)
    assert result.head_from == "deepspeed-chat"
    assert not list((tmp_path / "ck").glob("*.bin"))
    vh = head_of(tmp_path / "ck")
    assert torch.equal(vh[V_HEAD_WEIGHT], head) and vh[V_HEAD_BIAS].item() == 0
    ids = input_ids()
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        expected = (hidden @ head.T).squeeze(-1)
    assert torch.allclose(vhctl_values(tmp_path / "ck", ids), expected, atol=TOL, rtol=0)
    manifest = Manifest.read(tmp_path / "ck")
    assert manifest.extra["imported_from"]["format"] == "deepspeed-chat"


def test_import_deepspeed_chat_safetensors_needs_no_pickle(tmp_path) -> None:
    _, head = make_deepspeed_chat("gpt2", tmp_path / "rm", safetensors=True)
    assert wrap_model(str(tmp_path / "rm"), tmp_path / "ck").head_from == "deepspeed-chat"
    assert torch.equal(head_of(tmp_path / "ck")[V_HEAD_WEIGHT], head)
