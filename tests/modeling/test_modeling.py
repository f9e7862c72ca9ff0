"""The drop-in value-head models, on a tiny model of every supported architecture."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from helpers.tiny_models import (
    ARCHS,
    CAUSAL_ARCHS,
    SEQ2SEQ_ARCHS,
    SMALL_SHARD,
    auto_class,
    is_seq2seq,
    make_tiny_model,
    save_tiny_model,
)

from vhctl import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    ValueHead,
)
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_INDEX_NAME, VALUE_HEAD_NAME
from vhctl.errors import UsageError
from vhctl.modeling.value_head import hidden_size_of

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def vh_class(arch: str):
    return AutoModelForSeq2SeqLMWithValueHead if is_seq2seq(arch) else AutoModelForCausalLMWithValueHead


def inputs(arch: str, batch: int = 2, seq: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 200, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding on the first row
    out = {"input_ids": ids, "attention_mask": mask}
    if is_seq2seq(arch):
        out["decoder_input_ids"] = torch.randint(1, 200, (batch, 4), generator=gen)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_value_is_head_of_last_hidden_state(arch: str) -> None:
    """The value equals the head applied to the wrapped model's last hidden state (<= 1e-6, fp32)."""
    base = make_tiny_model(arch)
    model = vh_class(arch).from_pretrained(base, v_head_init_strategy="normal", summary_dropout_prob=0.0)
    model.eval()
    hidden = hidden_size_of(base.config)
    assert model.v_head.summary.weight.shape == (1, hidden)
    assert torch.count_nonzero(model.v_head.summary.bias) == 0
    batch = inputs(arch)
    logits, loss, value = model(**batch)
    assert loss is None
    assert logits.dtype == torch.float32 and value.dtype == torch.float32
    seq = batch["decoder_input_ids"].shape[1] if is_seq2seq(arch) else batch["input_ids"].shape[1]
    assert value.shape == (2, seq)
    with torch.no_grad():
        out = base(**batch, output_hidden_states=True)
        last = out.decoder_hidden_states[-1] if is_seq2seq(arch) else out.hidden_states[-1]
        expected = (last.float() @ model.v_head.summary.weight.T + model.v_head.summary.bias).squeeze(-1)
    assert torch.allclose(value, expected, atol=1e-6), (value - expected).abs().max()
    assert torch.allclose(logits, out.logits.float(), atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_save_load_round_trip_and_plain_transformers(arch: str, tmp_path) -> None:
    src = save_tiny_model(arch, tmp_path / "base")
    model = vh_class(arch).from_pretrained(
        str(src), v_head_init_strategy="normal", v_head_initializer_range=0.3
    )
    model.eval()
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    assert (out / VALUE_HEAD_NAME).is_file() and (out / MANIFEST_NAME).is_file()
    assert (out / "tokenizer.json").is_file(), "tokenizer files of the source travel with the checkpoint"
    # Plain transformers loads the base with no missing or unexpected keys.
    plain, info = auto_class(arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back = vh_class(arch).from_pretrained(str(out))
    back.eval()
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    batch = inputs(arch)
    assert torch.equal(model(**batch)[2], back(**batch)[2])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_sharded_round_trip(arch: str, tmp_path) -> None:
    src = save_tiny_model(arch, tmp_path / "base")
    model = vh_class(arch).from_pretrained(str(src), v_head_init_strategy="normal")
    model.save_pretrained(tmp_path / "ckpt", max_shard_size=SMALL_SHARD)
    assert (tmp_path / "ckpt" / SAFE_WEIGHTS_INDEX_NAME).is_file()
    back = vh_class(arch).from_pretrained(str(tmp_path / "ckpt"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_generate_passes_through(arch: str) -> None:
    model = vh_class(arch).from_pretrained(make_tiny_model(arch))
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    expected = model.pretrained_model.generate(
        input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0
    )
    assert torch.equal(out, expected)
    assert out.shape[1] >= 3


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "bart"])
def test_bf16_loading_gives_fp32_values(arch: str, tmp_path) -> None:
    src = save_tiny_model(arch, tmp_path / "base")
    model = vh_class(arch).from_pretrained(str(src), dtype=torch.bfloat16)
    assert next(model.pretrained_model.parameters()).dtype == torch.bfloat16
    logits, _, value = model(**inputs(arch))
    assert value.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.isfinite(value).all()


def test_init_strategies_and_dropout() -> None:
    base = make_tiny_model("gpt2")
    torch.manual_seed(0)
    default = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    bound = 1 / hidden_size_of(base.config) ** 0.5
    assert default.v_head.summary.weight.abs().max() <= bound  # PyTorch's default Linear init
    assert default.v_head.summary.bias.abs().item() > 0
    assert isinstance(default.v_head.dropout, torch.nn.Dropout) and default.v_head.dropout.p == 0.1
    normal = AutoModelForCausalLMWithValueHead.from_pretrained(
        base, v_head_init_strategy="normal", v_head_initializer_range=0.5, summary_dropout_prob=0.3
    )
    assert normal.v_head.dropout.p == 0.3
    assert normal.v_head.summary.bias.item() == 0
    assert 0.2 < normal.v_head.summary.weight.std().item() < 1.0
    none = AutoModelForCausalLMWithValueHead.from_pretrained(base, summary_dropout_prob=0.0)
    assert isinstance(none.v_head.dropout, torch.nn.Identity)
    base.config.summary_dropout_prob = 0.25  # the config wins, as in TRL
    from_config = AutoModelForCausalLMWithValueHead.from_pretrained(base, summary_dropout_prob=0.9)
    assert from_config.v_head.dropout.p == 0.25
    with pytest.raises(UsageError):
        AutoModelForCausalLMWithValueHead.from_pretrained(base, v_head_init_strategy="xavier")


def test_value_head_hidden_size_lookup() -> None:
    from transformers import OPTConfig

    config = OPTConfig(
        hidden_size=64,
        word_embed_proj_dim=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        vocab_size=50,
    )
    assert ValueHead(config).summary.in_features == 32

    class Nested:
        text_config = type("T", (), {"hidden_size": 48})()

    assert ValueHead(Nested()).summary.in_features == 48


def test_state_dict_and_kwargs_split(tmp_path) -> None:
    base = make_tiny_model("gpt2")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    keys = list(model.state_dict())
    assert keys[-2:] == ["v_head.summary.weight", "v_head.summary.bias"]
    assert len(keys) == len(base.state_dict()) + 2
    head, rest, kbit = AutoModelForCausalLMWithValueHead._split_kwargs(
        {
            "summary_dropout_prob": 0.1,
            "dtype": torch.float16,
            "use_gradient_checkpointing": True,
            "revision": "x",
        }
    )
    assert head == {"summary_dropout_prob": 0.1}
    assert rest == {"dtype": torch.float16, "revision": "x"}
    assert kbit == {"use_gradient_checkpointing": True}


def test_missing_head_warns_with_files_looked_in(tmp_path, caplog) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger="vhctl"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(src))
    text = caplog.text
    assert "no value head found" in text
    assert VALUE_HEAD_NAME in text and "model.safetensors" in text and "pytorch_model.bin" in text


def test_return_past_key_values_and_incremental_decoding() -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        make_tiny_model("llama"), summary_dropout_prob=0.0
    )
    model.eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    _, _, full_value = model(ids)
    _, _, first, cache = model(ids[:, :3], return_past_key_values=True)
    assert cache is not None
    _, _, last = model(ids[:, 3:], past_key_values=cache)
    assert torch.allclose(last[0, 0], full_value[0, 3], atol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL_ARCHS[:3] + SEQ2SEQ_ARCHS[:1])
def test_same_values_as_trl(arch: str) -> None:
    """TRL 1.12's class on the same weights gives the same values (the drop-in promise)."""
    from trl.experimental.ppo import modeling_value_head as trl_vh

    trl_cls = (
        trl_vh.AutoModelForSeq2SeqLMWithValueHead
        if is_seq2seq(arch)
        else trl_vh.AutoModelForCausalLMWithValueHead
    )
    base = make_tiny_model(arch)
    ours = vh_class(arch).from_pretrained(base, v_head_init_strategy="normal")
    theirs = trl_cls.from_pretrained(make_tiny_model(arch))
    theirs.v_head.load_state_dict(ours.v_head.state_dict())
    ours.eval()
    theirs.eval()
    batch = inputs(arch)
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[2], b[2], atol=1e-6)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_kbit_argument_names_match_peft() -> None:
    """The static list of kbit-training kwargs holds every one the installed peft's function takes,
    and nothing but those and the names other supported peft versions take."""
    import inspect

    from peft import prepare_model_for_kbit_training

    from vhctl.modeling.wrapper import _kbit_arg_names

    params = set(inspect.signature(prepare_model_for_kbit_training).parameters) - {"model"}
    other_versions = {"activation_checkpointing_kwargs"}  # peft 0.22 added it; 0.14 to 0.21 lack it
    assert params <= set(_kbit_arg_names())
    assert set(_kbit_arg_names()) - params <= other_versions
