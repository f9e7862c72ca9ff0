"""PEFT policies and reward adapters."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import LORA_TARGETS, make_reward_adapter, save_tiny_model
from peft import LoraConfig, PeftModel

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.constants import ADAPTERS_DIR, MANIFEST_NAME, VALUE_HEAD_NAME
from vhctl.errors import AdapterError, UsageError


def lora(arch: str) -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_score_equals_the_adapter_model_run_directly(arch: str, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    base = save_tiny_model(arch, tmp_path / "base")
    adapter = make_reward_adapter(arch, tmp_path / "rm", base)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(base), peft_config=lora(arch), reward_adapter=str(adapter), v_head_init_strategy="normal"
    )
    assert model.is_peft_model and model.supports_rm_adapter
    ids = torch.randint(1, 500, (2, 7))
    mask = torch.ones_like(ids)
    scores = model.compute_reward_score(ids, attention_mask=mask)
    assert model.pretrained_model.active_adapter == "default", "switched back to the policy adapter"

    direct = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1), str(adapter)
    )
    direct.eval()
    with torch.no_grad():
        out = direct(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        expected_all = direct.base_model.model.score(out.hidden_states[-1])
    assert scores.shape == (2, 7, 1)
    assert torch.allclose(scores, expected_all, atol=1e-5)
    # The classifier's own logits pool the last token: the same number.
    assert torch.allclose(scores[:, -1, 0], out.logits[:, 0], atol=1e-5)

    # The policy path is unaffected by the reward adapter.
    logits, _, value = model(ids, attention_mask=mask)
    assert value.shape == (2, 7)


def test_peft_policy_saves_adapter_head_and_reward_adapter(tmp_path) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(base), peft_config=lora("gpt2"), reward_adapter=str(adapter), reward_adapter_name="rm"
    )
    assert set(model.state_dict()) == {"v_head.summary.weight", "v_head.summary.bias"}
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    assert (out / "adapter_config.json").is_file() and (out / VALUE_HEAD_NAME).is_file()
    assert (out / ADAPTERS_DIR / "rm" / "adapter_model.safetensors").is_file()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["adapters"]["rm"]["path"] == "adapters/rm"
    assert "peft_policy" in manifest["extra"]
    back = AutoModelForCausalLMWithValueHead.from_pretrained(str(out), is_trainable=True)
    assert back.is_peft_model
    assert torch.equal(back.v_head.summary.weight, model.v_head.summary.weight)
    trainable = [n for n, p in back.named_parameters() if p.requires_grad and "lora" in n]
    assert trainable, "is_trainable=True keeps the LoRA weights trainable"


def test_reward_adapter_needs_peft_and_a_score_head(tmp_path) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base)
    with pytest.raises(UsageError, match="PEFT"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(base), reward_adapter=str(adapter))
    with pytest.raises(UsageError):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(base), reward_adapter=123)
    # A plain LoRA policy adapter has no score head: refused as a reward adapter.
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(str(base), peft_config=lora("gpt2"))
    policy.pretrained_model.save_pretrained(tmp_path / "plain")
    with pytest.raises(AdapterError, match="score"):
        AutoModelForCausalLMWithValueHead.from_pretrained(
            str(base), peft_config=lora("gpt2"), reward_adapter=str(tmp_path / "plain")
        )
    with pytest.raises(AdapterError):
        policy.compute_reward_score(torch.tensor([[1, 2]]))
