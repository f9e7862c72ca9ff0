"""Reference models: frozen copies that share their first layers with the policy."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import ARCHS, is_seq2seq, make_tiny_model

from vhctl import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    create_reference_model,
)
from vhctl.errors import LayerPatternError
from vhctl.modeling.reference import detect_layer_pattern


def wrap(arch: str):
    cls = AutoModelForSeq2SeqLMWithValueHead if is_seq2seq(arch) else AutoModelForCausalLMWithValueHead
    return cls.from_pretrained(make_tiny_model(arch), v_head_init_strategy="normal")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_pattern_detected_for_every_architecture(arch: str) -> None:
    model = wrap(arch)
    pattern, count = detect_layer_pattern([n for n, _ in model.named_parameters()])
    assert "{layer}" in pattern and count == 2


def test_independent_copy_without_sharing() -> None:
    model = wrap("gpt2")
    ref = create_reference_model(model)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in ref.parameters()}
    with torch.no_grad():
        model.pretrained_model.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    assert not torch.equal(
        model.pretrained_model.transformer.h[0].mlp.c_fc.weight,
        ref.pretrained_model.transformer.h[0].mlp.c_fc.weight,
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt", "gpt_neox", "bloom", "t5", "bart"])
def test_shared_layers_share_storage_and_stay_frozen_while_policy_trains(arch: str) -> None:
    model = wrap(arch)
    model.train()
    ref = create_reference_model(model, num_shared_layers=1)
    pattern, _ = detect_layer_pattern([n for n, _ in model.named_parameters()])
    boundary = "." + pattern.format(layer=1) + "."
    names = [n for n, _ in model.named_parameters()]
    first_unshared = next(i for i, n in enumerate(names) if boundary in f".{n}.")
    policy_params = dict(model.named_parameters())
    ref_params = dict(ref.named_parameters())
    for i, name in enumerate(names):
        shared = i < first_unshared
        same = policy_params[name].data_ptr() == ref_params[name].data_ptr()
        if shared:
            assert same and not policy_params[name].requires_grad, name
    unshared_names = [n for n in names[first_unshared:] if policy_params[n].requires_grad]
    assert unshared_names, "some policy parameters stay trainable"
    for name in unshared_names:
        assert policy_params[name].data_ptr() != ref_params[name].data_ptr(), name
    before_shared = {n: ref_params[n].detach().clone() for n in names[:first_unshared]}
    before_ref = {n: p.detach().clone() for n, p in ref.named_parameters()}

    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = {"input_ids": torch.randint(1, 100, (2, 5))}
    if is_seq2seq(arch):
        batch["decoder_input_ids"] = torch.randint(1, 100, (2, 3))
    logits, _, value = model(**batch)
    (logits.mean() + value.mean()).backward()
    optim.step()

    for name, value_before in before_shared.items():
        assert torch.equal(policy_params[name], value_before), f"shared {name} changed"
    for name, p in ref.named_parameters():
        assert torch.equal(p, before_ref[name]), f"reference {name} changed while the policy trained"
    changed = [n for n in unshared_names if not torch.equal(policy_params[n], before_ref[n])]
    assert changed, "the policy's unshared layers did train"


def test_shared_memory_is_held_once() -> None:
    model = wrap("gpt2")
    ref = create_reference_model(model, num_shared_layers=1)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shared = [p for p in ref.parameters() if p.untyped_storage().data_ptr() in storages]
    assert shared and all(not p.requires_grad for p in shared)


def test_bad_layer_counts_and_patterns() -> None:
    model = wrap("gpt2")
    with pytest.raises(LayerPatternError, match="2 layers"):
        create_reference_model(model, num_shared_layers=2)
    with pytest.raises(LayerPatternError, match="matches no parameter"):
        create_reference_model(model, num_shared_layers=1, pattern="decoder.blocks.{layer}")
    ref = create_reference_model(model, num_shared_layers=1, pattern="transformer.h.{layer}")
    assert ref.pretrained_model.transformer.wte.weight is model.pretrained_model.transformer.wte.weight
