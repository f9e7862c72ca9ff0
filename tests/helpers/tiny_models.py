"""Tiny models of every supported architecture, built locally, for tests (no network).

Every config has 2 layers and a hidden size of 32 or 64, uses the shipped tiny tokenizer's
vocabulary (:data:`TINY_VOCAB` tokens, ``<|endoftext|>`` = id 0 as bos, eos, pad and decoder
start), and is built with a fixed seed, so a test can compare tensors exactly.

Checkpoints in the layouts TRL writes are made with TRL itself (``trl`` 1.12,
``trl.experimental.ppo.modeling_value_head``), so the tests read the real producer's files.

Example:
    >>> model = make_tiny_model("llama")                          # doctest: +SKIP
    >>> folder = save_tiny_model("gpt2", tmp_path / "gpt2")        # doctest: +SKIP
    >>> weight, bias = make_trl_checkpoint("opt", tmp_path / "trl", "sharded")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BloomConfig,
    CohereConfig,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    T5Config,
)

from vhctl._tiny import tiny_model_path
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
)

# trl.experimental warns on import; the tests know it is experimental.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TINY_VOCAB = 1024  # the shipped tokenizer's size (checked by tests/modeling/test_tiny_models.py)
TOKEN_ID = 0  # "<|endoftext|>": bos = eos = pad = decoder start
_IDS: dict[str, Any] = {"bos_token_id": TOKEN_ID, "eos_token_id": TOKEN_ID, "pad_token_id": TOKEN_ID}
_SEQ2SEQ_IDS: dict[str, Any] = {**_IDS, "decoder_start_token_id": TOKEN_ID}

# Layouts make_trl_checkpoint can write.
TRL_LAYOUTS = ("safetensors", "sharded", "bin", "peft")
# Shard size that splits even the smallest tiny model into several files.
SMALL_SHARD = "60KB"


def _gpt2() -> PretrainedConfig:
    return GPT2Config(
        vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_IDS,
    )  # fmt: skip


def _gpt_neo() -> PretrainedConfig:
    return GPTNeoConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        attention_types=[[["global", "local"], 1]], window_size=16, max_position_embeddings=128,
        embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0, **_IDS,
    )  # fmt: skip


def _gpt_neox() -> PretrainedConfig:
    # Hidden 64 and untied embeddings (embed_out apart), like the Pythia models.
    return GPTNeoXConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0,
        tie_word_embeddings=False, **_IDS,
    )  # fmt: skip


def _opt() -> PretrainedConfig:
    # word_embed_proj_dim != hidden_size (project_in/out, as in opt-350m): the last hidden state
    # has 16 features, so a value head must take its size from word_embed_proj_dim.
    return OPTConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=2, max_position_embeddings=128, do_layer_norm_before=False,
        dropout=0.0, attention_dropout=0.0, **_IDS,
    )  # fmt: skip


def _bloom() -> PretrainedConfig:
    return BloomConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, n_layer=2, n_head=4,
        hidden_dropout=0.0, attention_dropout=0.0, **_IDS,
    )  # fmt: skip


def _llama_like(config_cls: type[PretrainedConfig], **overrides: Any) -> PretrainedConfig:
    kwargs: dict[str, Any] = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 128,
        **_IDS,
    }
    kwargs.update(overrides)
    return config_cls(**kwargs)


def _llama() -> PretrainedConfig:
    return _llama_like(LlamaConfig, tie_word_embeddings=False)


def _mistral() -> PretrainedConfig:
    return _llama_like(MistralConfig, num_key_value_heads=1, sliding_window=32, tie_word_embeddings=False)


def _qwen2() -> PretrainedConfig:
    return _llama_like(Qwen2Config, hidden_size=64, intermediate_size=128, tie_word_embeddings=True)


def _gemma() -> PretrainedConfig:
    return _llama_like(GemmaConfig, num_key_value_heads=1, tie_word_embeddings=True)


def _gemma2() -> PretrainedConfig:
    return _llama_like(
        Gemma2Config, query_pre_attn_scalar=8, sliding_window=16, tie_word_embeddings=True,
        attn_implementation="eager",
    )  # fmt: skip


def _phi3() -> PretrainedConfig:
    return _llama_like(
        Phi3Config, original_max_position_embeddings=128, tie_word_embeddings=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
    )  # fmt: skip


def _cohere() -> PretrainedConfig:
    return _llama_like(CohereConfig, tie_word_embeddings=True)


def _t5() -> PretrainedConfig:
    return T5Config(
        vocab_size=TINY_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        **_SEQ2SEQ_IDS,
    )  # fmt: skip


def _bart() -> PretrainedConfig:
    return BartConfig(
        vocab_size=TINY_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, forced_eos_token_id=TOKEN_ID,
        **_SEQ2SEQ_IDS,
    )  # fmt: skip


ARCHS: dict[str, Callable[[], PretrainedConfig]] = {
    "gpt2": _gpt2,
    "gpt_neo": _gpt_neo,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "bloom": _bloom,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "phi3": _phi3,
    "cohere": _cohere,
    "t5": _t5,
    "bart": _bart,
}
SEQ2SEQ_ARCHS = ["t5", "bart"]
CAUSAL_ARCHS = [name for name in ARCHS if name not in SEQ2SEQ_ARCHS]
# Causal archs with a *ForSequenceClassification class (a "score" head) for reward adapters.
REWARD_ARCHS = [name for name in CAUSAL_ARCHS if name != "cohere"]

# --- families trained today ---------------------------------------------------------------
# Not TRL's 14: the families RLHF runs start from now (issue #13), tiny and seeded like ARCHS. A
# config class missing from the installed transformers makes its family unavailable (tests skip it).


class Family(NamedTuple):
    """A current model family for the architecture tests.

    Attributes:
        config_class: the transformers config class name (looked up when building).
        overrides: config fields; with ``llama_like`` on top of :func:`_llama_like`'s tiny defaults.
        kinds: what the family exercises: ``dense``, ``moe`` (routed experts), ``sliding`` (a local
            attention window), ``chunked`` (chunked local attention), ``mla`` (latent attention),
            ``ssm`` (Mamba state), ``linear`` (linear attention or a short convolution state).
        shares_prefix: whether the scorer can run a prompt shared by several records once (only
            key/value attention caches can be replicated along the batch).
        llama_like: start from the Llama-shaped defaults (heads, head_dim, positions).
    """

    config_class: str
    overrides: dict[str, Any]
    kinds: tuple[str, ...]
    shares_prefix: bool
    llama_like: bool = True

    @property
    def available(self) -> bool:
        import transformers

        return hasattr(transformers, self.config_class)

    def config(self) -> PretrainedConfig:
        import transformers

        config_cls = getattr(transformers, self.config_class)
        if self.llama_like:
            return _llama_like(config_cls, **self.overrides)
        return config_cls(vocab_size=TINY_VOCAB, **_IDS, **self.overrides)


_MOE: dict[str, Any] = {"num_local_experts": 4, "num_experts_per_tok": 2}
_MAMBA2: dict[str, Any] = {
    "mamba_n_heads": 8,
    "mamba_d_head": 8,
    "mamba_n_groups": 1,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 16,
}

FAMILIES: dict[str, Family] = {
    # dense
    "qwen3": Family("Qwen3Config", {}, ("dense",), True),
    "olmo2": Family("Olmo2Config", {}, ("dense",), True),
    "granite": Family(
        "GraniteConfig",
        {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.25},
        ("dense",),
        True,
    ),
    "smollm3": Family("SmolLM3Config", {"no_rope_layers": [1, 0]}, ("dense",), True),
    "glm4": Family("Glm4Config", {}, ("dense",), True),
    "ernie4_5": Family("Ernie4_5Config", {}, ("dense",), True),
    # mixture of experts
    "qwen3_moe": Family(
        "Qwen3MoeConfig",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
        ("moe",),
        True,
    ),
    "mixtral": Family("MixtralConfig", _MOE, ("moe",), True),
    "phimoe": Family("PhimoeConfig", _MOE, ("moe",), True),
    "granitemoe": Family("GraniteMoeConfig", _MOE, ("moe",), True),
    "olmoe": Family("OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}, ("moe",), True),
    "deepseek_v3": Family(
        "DeepseekV3Config",
        {
            "num_key_value_heads": 4,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "n_shared_experts": 1,
        },
        ("moe", "mla"),
        True,
    ),
    # local attention windows
    "gemma3_text": Family(
        "Gemma3TextConfig",
        {
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 8,
        },
        ("dense", "sliding"),
        True,
    ),
    "gpt_oss": Family(
        "GptOssConfig",
        {
            **_MOE,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
            },
        },
        ("moe", "sliding"),
        True,
    ),
    "llama4_text": Family(
        "Llama4TextConfig",
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 1,
            "intermediate_size_mlp": 64,
            "attention_chunk_size": 8,
        },
        ("moe", "chunked"),
        False,
    ),
    # state-space and linear-attention layers (alone or beside attention)
    "mamba2": Family(
        "Mamba2Config",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_heads": 8,
            "head_dim": 8,
            "expand": 2,
            "n_groups": 1,
            "state_size": 16,
            "conv_kernel": 4,
            "chunk_size": 16,
        },
        ("ssm",),
        False,
        llama_like=False,
    ),
    "falcon_h1": Family("FalconH1Config", {**_MAMBA2, "mamba_d_ssm": 64}, ("ssm", "dense"), False),
    "bamba": Family("BambaConfig", {**_MAMBA2, "attn_layer_indices": [1]}, ("ssm", "dense"), False),
    "jamba": Family(
        "JambaConfig",
        {
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "mamba_d_state": 8,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 4,
        },
        ("ssm", "moe"),
        False,
    ),
    "qwen3_next": Family(
        "Qwen3NextConfig",
        {
            "layer_types": ["linear_attention", "full_attention"],
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
        },
        ("linear", "moe"),
        False,
    ),
    "lfm2": Family(
        "Lfm2Config",
        {"layer_types": ["conv", "full_attention"], "block_auto_adjust_ff_dim": False},
        ("linear", "dense"),
        False,
    ),
}

# LoRA targets per arch (PEFT has no default for some of them).
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_neo": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "cohere": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
}
# GPT-2 stores its projections as Conv1D (weights transposed): LoRA needs fan_in_fan_out.
_CONV1D_ARCHS = ("gpt2",)


class HeadTensors(NamedTuple):
    """The value head a TRL checkpoint holds: ``weight`` (1, hidden) and ``bias`` (1,)."""

    weight: torch.Tensor
    bias: torch.Tensor


def _check_arch(arch: str) -> None:
    if arch not in ARCHS and arch not in FAMILIES:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join([*ARCHS, *FAMILIES])}")


def tiny_config(arch: str) -> PretrainedConfig:
    """A fresh tiny config for ``arch`` (one of :data:`ARCHS` or :data:`FAMILIES`)."""
    _check_arch(arch)
    return ARCHS[arch]() if arch in ARCHS else FAMILIES[arch].config()


def is_seq2seq(arch: str) -> bool:
    """True for the encoder-decoder archs (loaded with ``AutoModelForSeq2SeqLM``)."""
    _check_arch(arch)
    return arch in SEQ2SEQ_ARCHS


def auto_class(arch: str) -> Any:
    """``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``, whichever loads ``arch``."""
    return AutoModelForSeq2SeqLM if is_seq2seq(arch) else AutoModelForCausalLM


def make_tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised tiny model of ``arch``, in eval mode.

    Args:
        arch: a key of :data:`ARCHS`.
        seed: ``torch.manual_seed`` used just before building, so equal seeds give equal weights.
        dtype: parameter dtype.

    Returns:
        A ``transformers`` ``*ForCausalLM`` or ``*ForConditionalGeneration`` model.
    """
    config = tiny_config(arch)
    torch.manual_seed(seed)
    model = auto_class(arch).from_config(config, dtype=dtype)
    return model.eval()


def local_window_value_model(window: int = 6) -> Any:
    """A 2-layer GPT-Neo value model with a local attention window of ``window`` tokens (seeded).

    Tests hide the window from the scorer (patching ``vhctl.scoring.model_parts._sliding_window``) to
    check that prompt sharing's first-use check catches a model whose cache reuse counts padding.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from vhctl import AutoModelForCausalLMWithValueHead

    config = AutoConfig.for_model(
        "gpt_neo", vocab_size=1024, num_layers=2, hidden_size=32, num_heads=2, max_position_embeddings=256,
        attention_types=[[["global", "local"], 1]], window_size=window,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLMWithValueHead.from_pretrained(AutoModelForCausalLM.from_config(config)).eval()


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The shipped tiny tokenizer (a fresh fast tokenizer each call, so tests may change it)."""
    return AutoTokenizer.from_pretrained(tiny_model_path())


def save_tiny_model(
    arch: str,
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    with_tokenizer: bool = True,
    max_shard_size: str | int | None = None,
) -> Path:
    """Save a tiny model (and tokenizer) to ``folder`` the way a hub repo looks.

    Args:
        arch: a key of :data:`ARCHS`.
        folder: destination, created if missing.
        seed: weights seed (see :func:`make_tiny_model`).
        with_tokenizer: also write the tiny tokenizer's files.
        max_shard_size: e.g. :data:`SMALL_SHARD` to get ``model.safetensors.index.json`` + shards.

    Returns:
        ``folder`` as a ``Path``.
    """
    folder = Path(folder)
    model = make_tiny_model(arch, seed=seed)
    kwargs: dict[str, Any] = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_lora_config(arch: str, task_type: str | None = None, **overrides: Any) -> Any:
    """A small ``peft.LoraConfig`` (r=4, alpha 8) that fits ``arch``.

    Args:
        arch: a key of :data:`ARCHS`; picks :data:`LORA_TARGETS` and, for GPT-2's Conv1D
            layers, ``fan_in_fan_out=True``.
        task_type: default "SEQ_2_SEQ_LM" or "CAUSAL_LM" after the arch.
        **overrides: any other ``LoraConfig`` field (``modules_to_save``, ``init_lora_weights``...).
    """
    from peft import LoraConfig

    _check_arch(arch)
    kwargs: dict[str, Any] = {
        "task_type": task_type or ("SEQ_2_SEQ_LM" if is_seq2seq(arch) else "CAUSAL_LM"),
        "r": 4,
        "lora_alpha": 8,
        "target_modules": list(LORA_TARGETS[arch]),
        "fan_in_fan_out": arch in _CONV1D_ARCHS,
        **overrides,
    }
    return LoraConfig(**kwargs)


def _trl_class(arch: str) -> Any:
    from trl.experimental.ppo.modeling_value_head import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
    )

    return AutoModelForSeq2SeqLMWithValueHead if is_seq2seq(arch) else AutoModelForCausalLMWithValueHead


def peft_base_folder(folder: str | os.PathLike[str]) -> Path:
    """Where :func:`make_trl_checkpoint` saves the base model of a "peft" layout: ``<folder>-base``."""
    folder = Path(folder)
    return folder.with_name(folder.name + "-base")


def make_trl_checkpoint(
    arch: str, folder: str | os.PathLike[str], layout: str, *, seed: int = 0, with_tokenizer: bool = True
) -> HeadTensors:
    """Write a checkpoint the way TRL's value-head classes save one, and return its head.

    The value head gets N(0, 0.5) weights (``v_head_init_strategy="normal"``) and then a
    non-zero bias, so a loader that drops or re-initialises it is caught.

    Layouts (see :data:`TRL_LAYOUTS`):

    - ``"safetensors"``: TRL ``save_pretrained``: ``model.safetensors`` with the ``v_head.*`` keys.
    - ``"sharded"``: the same with :data:`SMALL_SHARD` shards + ``model.safetensors.index.json``;
      the head sits in one of the shards.
    - ``"bin"``: config + ``pytorch_model.bin`` (``torch.save`` of TRL's full ``state_dict()``,
      ``v_head.*`` included), as TRL checkpoints written before safetensors look.
    - ``"peft"``: a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) and
      the head alone in ``pytorch_model.bin``, as TRL saves a PEFT model. The base model is
      saved first to :func:`peft_base_folder` and the adapter points at it.

    Args:
        arch: a key of :data:`ARCHS`.
        folder: destination, created if missing.
        layout: one of :data:`TRL_LAYOUTS`.
        seed: seeds the base weights, the LoRA weights and the head.
        with_tokenizer: also write the tiny tokenizer's files into ``folder``.

    Returns:
        Copies of the saved ``v_head.summary.weight`` (1, hidden) and ``v_head.summary.bias`` (1,).
    """
    if layout not in TRL_LAYOUTS:
        raise ValueError(f"unknown TRL layout {layout!r}; known: {', '.join(TRL_LAYOUTS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trl_cls = _trl_class(arch)

    if layout == "peft":
        from peft import get_peft_model

        base = save_tiny_model(arch, peft_base_folder(folder), seed=seed, with_tokenizer=with_tokenizer)
        model = auto_class(arch).from_pretrained(base.resolve())
        torch.manual_seed(seed + 1)
        # Random B as well, so the adapter changes the outputs.
        model = get_peft_model(model, tiny_lora_config(arch, init_lora_weights=False))
    else:
        model = make_tiny_model(arch, seed=seed)

    torch.manual_seed(seed + 2)
    wrapped = trl_cls.from_pretrained(model, v_head_init_strategy="normal", v_head_initializer_range=0.5)
    with torch.no_grad():
        wrapped.v_head.summary.bias.fill_(0.25)
    head = HeadTensors(
        wrapped.v_head.summary.weight.detach().clone(), wrapped.v_head.summary.bias.detach().clone()
    )

    if layout == "safetensors" or layout == "peft":
        wrapped.save_pretrained(folder)
    elif layout == "sharded":
        wrapped.save_pretrained(folder, max_shard_size=SMALL_SHARD)
    else:  # "bin": the pickle layout TRL wrote with safe_serialization=False
        wrapped.pretrained_model.config.save_pretrained(folder)
        wrapped.pretrained_model.generation_config.save_pretrained(folder)
        state = {name: tensor.detach().clone().contiguous() for name, tensor in wrapped.state_dict().items()}
        torch.save(state, folder / PT_WEIGHTS_NAME)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    _check_trl_layout(folder, layout)
    return head


def _check_trl_layout(folder: Path, layout: str) -> None:
    """Fail loudly if a transformers/TRL upgrade changed what the layout looks like on disk."""
    if layout == "safetensors":
        expected = [CONFIG_NAME, SAFE_WEIGHTS_NAME]
    elif layout == "sharded":
        expected = [CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME]
        weight_map = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
        if V_HEAD_WEIGHT not in weight_map or V_HEAD_BIAS not in weight_map:
            raise AssertionError(f"TRL sharded save left the value head out of {SAFE_WEIGHTS_INDEX_NAME}")
    elif layout == "bin":
        expected = [CONFIG_NAME, GENERATION_CONFIG_NAME, PT_WEIGHTS_NAME]
    else:
        expected = [ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME, PT_WEIGHTS_NAME]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise AssertionError(f"TRL {layout!r} layout in {folder} lacks {missing}")


def make_reward_adapter(
    arch: str, folder: str | os.PathLike[str], base_folder: str | os.PathLike[str], *, seed: int = 0
) -> Path:
    """Write a PEFT reward-modeling adapter (LoRA + a ``score`` head) for the base model in ``base_folder``.

    Made as PEFT users make one: ``AutoModelForSequenceClassification`` with ``num_labels=1``
    from ``base_folder``, ``LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"])``, random
    LoRA weights, ``save_pretrained`` in safetensors. ``adapter_config.json`` names
    ``base_folder`` (made absolute) as its base model.

    Args:
        arch: a key of :data:`REWARD_ARCHS` (the arch ``base_folder`` holds).
        folder: destination, created if missing.
        base_folder: a saved tiny model, e.g. from :func:`save_tiny_model`.
        seed: seeds the score head and the LoRA weights.

    Returns:
        ``folder`` as a ``Path``.
    """
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    if arch not in REWARD_ARCHS:
        raise ValueError(
            f"no reward adapter for {arch!r}: transformers has no sequence-classification model with a "
            f"'score' head for it; use one of {', '.join(REWARD_ARCHS)}"
        )
    folder = Path(folder)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(Path(base_folder).resolve(), num_labels=1)
    lora = tiny_lora_config(arch, task_type="SEQ_CLS", modules_to_save=["score"], init_lora_weights=False)
    model = get_peft_model(model, lora)
    model.save_pretrained(folder)
    return folder


def wrapped_tiny(arch: str = "gpt2", seed: int = 0) -> Any:
    """A tiny model of ``arch`` in its value-head class, head drawn N(0, 0.2) with ``seed``, in eval mode."""
    from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

    model = make_tiny_model(arch, seed=seed)
    cls = AutoModelForSeq2SeqLMWithValueHead if arch in ("t5", "bart") else AutoModelForCausalLMWithValueHead
    torch.manual_seed(seed)
    return cls.from_pretrained(model, v_head_init_strategy="normal").eval()
