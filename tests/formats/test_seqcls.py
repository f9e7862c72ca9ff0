"""transformers *ForSequenceClassification (num_labels=1) interop, with transformers as the oracle."""

from __future__ import annotations

import pytest
import torch
from helpers.formats import (
    TOL,
    assert_same_base,
    config_of,
    head_of,
    input_ids,
    make_seqcls,
    seqcls_scores,
    set_head,
    trl_checkpoint,
    vhctl_values,
)
from helpers.tiny_models import CAUSAL_ARCHS, tiny_config

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import UnsupportedModelError, UsageError
from vhctl.formats.keymaps import FOLDABLE_NORM_BIAS, VHCTL_EXPORT_FIELD
from vhctl.formats.padding import PAD_EOS as EOS  # the tiny tokenizer pads with EOS, no spare row
from vhctl.ops.export import export_checkpoint
from vhctl.ops.wrap import wrap_model


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "qwen2"])
def test_import_seqcls_gives_its_scores_as_values(arch: str, tmp_path) -> None:
    model = make_seqcls(arch, tmp_path / "rm")
    result = wrap_model(str(tmp_path / "rm"), tmp_path / "ck")
    assert result.head_from == "seqcls" and result.head_init == "loaded"
    head = head_of(tmp_path / "ck")
    assert torch.equal(head[V_HEAD_WEIGHT], model.score.weight) and head[V_HEAD_BIAS].item() == 0
    ids = input_ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, 0]
    assert torch.allclose(vhctl_values(tmp_path / "ck", ids)[:, -1], expected, atol=TOL, rtol=0)
    manifest = Manifest.read(tmp_path / "ck")
    assert manifest.extra["imported_from"]["format"] == "seqcls"
    untied = arch in ("llama", "gpt_neox")
    assert manifest.extra["imported_from"]["lm_head"] == ("zeros" if untied else "tied")
    assert bool(result.notes) == untied
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM._model_mapping[type(tiny_config(arch))].__name__
    assert config_of(tmp_path / "ck")["architectures"] == [causal]


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "bloom"])
def test_export_folds_a_nonzero_bias_into_the_final_norm(arch: str, tmp_path) -> None:
    ck = trl_checkpoint(arch, tmp_path)
    assert head_of(ck)[V_HEAD_BIAS].item() == 0.25
    result = export_checkpoint(ck, "seqcls", tmp_path / "rm", pad_token=EOS)
    assert result.bias == "norm" and result.norm_bias_key == FOLDABLE_NORM_BIAS[arch][0]
    ids = input_ids()
    assert torch.allclose(seqcls_scores(tmp_path / "rm", ids), vhctl_values(ck, ids)[:, -1], atol=TOL, rtol=0)

    # Round trip: the bias goes back into the head, the norm bias back to (within 1e-6 of) itself.
    wrap_model(str(tmp_path / "rm"), tmp_path / "back")
    assert torch.allclose(head_of(tmp_path / "back")[V_HEAD_BIAS], head_of(ck)[V_HEAD_BIAS], atol=TOL, rtol=0)
    assert torch.equal(head_of(tmp_path / "back")[V_HEAD_WEIGHT], head_of(ck)[V_HEAD_WEIGHT])
    assert_same_base(ck, tmp_path / "back", atol=TOL)
    assert torch.allclose(vhctl_values(tmp_path / "back", ids), vhctl_values(ck, ids), atol=TOL, rtol=0)


def test_opt_fold_needs_a_final_norm_without_projection(tmp_path) -> None:
    # The tiny OPT projects its output (word_embed_proj_dim != hidden_size): no exact fold there.
    ck = trl_checkpoint("opt", tmp_path)
    with pytest.raises(UnsupportedModelError, match="--bias config"):
        export_checkpoint(ck, "seqcls", tmp_path / "rm", pad_token=EOS)
    assert not (tmp_path / "rm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vhctl-")]
    # An OPT with a final norm and no projection folds exactly.
    from transformers import AutoModelForCausalLM, OPTConfig

    config = OPTConfig(
        vocab_size=1024,
        hidden_size=32,
        word_embed_proj_dim=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=128,
        do_layer_norm_before=True,
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "opt")
    wrap_model(str(tmp_path / "opt"), tmp_path / "ck2", init="normal", std=0.5, seed=0)
    set_head(tmp_path / "ck2", bias=-0.75)
    result = export_checkpoint(tmp_path / "ck2", "seqcls", tmp_path / "rm2", pad_token=EOS)
    assert result.norm_bias_key == "model.decoder.final_layer_norm.bias"
    ids = input_ids()
    assert torch.allclose(
        seqcls_scores(tmp_path / "rm2", ids), vhctl_values(tmp_path / "ck2", ids)[:, -1], atol=TOL, rtol=0
    )


def test_llama_zero_bias_is_exact_and_nonzero_bias_needs_config_mode(tmp_path) -> None:
    ck = trl_checkpoint("llama", tmp_path)
    ids = input_ids()
    with pytest.raises(UnsupportedModelError, match="bias 0.25"):
        export_checkpoint(ck, "seqcls", tmp_path / "refused", pad_token=EOS)
    with pytest.raises(UsageError):
        export_checkpoint(ck, "seqcls", tmp_path / "refused", bias="mean", pad_token=EOS)

    result = export_checkpoint(ck, "seqcls", tmp_path / "cfg", bias="config", pad_token=EOS)
    assert result.bias == "config"
    assert config_of(tmp_path / "cfg")[VHCTL_EXPORT_FIELD]["value_head_bias"] == 0.25
    values = vhctl_values(ck, ids)[:, -1]
    assert torch.allclose(seqcls_scores(tmp_path / "cfg", ids) + 0.25, values, atol=TOL, rtol=0)
    wrap_model(str(tmp_path / "cfg"), tmp_path / "back")
    assert head_of(tmp_path / "back")[V_HEAD_BIAS].item() == 0.25
    assert torch.allclose(vhctl_values(tmp_path / "back", ids)[:, -1], values, atol=TOL, rtol=0)
    assert_same_base(ck, tmp_path / "back")  # exact; the LM head (not in the format) comes back as zeros

    set_head(ck, bias=0.0)
    assert export_checkpoint(ck, "seqcls", tmp_path / "zero", pad_token=EOS).bias == "zero"
    assert torch.allclose(
        seqcls_scores(tmp_path / "zero", ids), vhctl_values(ck, ids)[:, -1], atol=TOL, rtol=0
    )


def test_retrained_export_reimports_as_the_model_scores(tmp_path) -> None:
    # After export, someone trains the seqcls model (here: changes its score weights). The record's
    # fingerprint no longer matches: a folded bias stays in the norm (the head bias is zero), which
    # keeps the new model's scores exactly; a config-mode bias is no longer trusted and is dropped.
    from safetensors.torch import load_file, save_file

    ids = input_ids()
    for arch, mode in (("gpt2", "auto"), ("llama", "config")):
        ck = trl_checkpoint(arch, tmp_path)
        rm = tmp_path / f"rm-{arch}"
        export_checkpoint(ck, "seqcls", rm, bias=mode, pad_token=EOS)
        tensors = load_file(str(rm / "model.safetensors"))
        tensors["score.weight"] = tensors["score.weight"] * 1.5
        save_file(tensors, str(rm / "model.safetensors"), metadata={"format": "pt"})
        wrap_model(str(rm), tmp_path / f"back-{arch}")
        got = vhctl_values(tmp_path / f"back-{arch}", ids)[:, -1]
        assert torch.allclose(got, seqcls_scores(rm, ids), atol=TOL, rtol=0), arch


def test_sharded_checkpoint_keeps_its_shards(tmp_path) -> None:
    from helpers.tiny_models import save_tiny_model

    base = save_tiny_model("gpt2", tmp_path / "base", max_shard_size="60KB")
    wrap_model(str(base), tmp_path / "ck", init="normal", std=0.5, seed=3)
    result = export_checkpoint(tmp_path / "ck", "seqcls", tmp_path / "rm", pad_token=EOS)
    assert "model.safetensors.index.json" in result.files
    ids = input_ids()
    assert torch.allclose(
        seqcls_scores(tmp_path / "rm", ids), vhctl_values(tmp_path / "ck", ids)[:, -1], atol=TOL, rtol=0
    )


def test_formats_without_a_score_head_are_refused(tmp_path) -> None:
    ck = trl_checkpoint("t5", tmp_path)
    with pytest.raises(UnsupportedModelError, match="seq2seq"):
        export_checkpoint(ck, "seqcls", tmp_path / "x", pad_token=EOS)
    assert "cohere" in CAUSAL_ARCHS
    cohere = trl_checkpoint("cohere", tmp_path)
    with pytest.raises(UnsupportedModelError, match="sequence-classification"):
        export_checkpoint(cohere, "seqcls", tmp_path / "y", pad_token=EOS)


def test_multi_label_classifier_is_refused(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    config = tiny_config("gpt2")
    config.num_labels = 3
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "rm")
    with pytest.raises(UnsupportedModelError, match="num_labels=1"):
        wrap_model(str(tmp_path / "rm"), tmp_path / "ck")
