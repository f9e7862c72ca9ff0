"""Every foreign format's key map, in one place.

A *key map* says where a format keeps the backbone and the scalar head, and which config fields
travel with them. vhctl's own names are the base model's names as ``save_pretrained`` of the
``*ForCausalLM`` / ``*ForConditionalGeneration`` class writes them, plus ``v_head.summary.weight``
(1, hidden) and ``v_head.summary.bias`` (1,) in ``value_head.safetensors``.

``{base}`` in a key stands for the model class's ``base_model_prefix`` (``transformer`` for GPT-2,
``model`` for Llama and OPT, ``gpt_neox`` for GPT-NeoX...): a causal LM keeps its backbone under
it, and so do the OpenRLHF and sequence-classification classes, which is why their backbone keys
are the causal LM's keys minus the LM head. :func:`markdown_table` renders :data:`KEYMAPS` for the
README, so the table there cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhctl.constants import ARCH_CAUSAL, ARCH_SEQ2SEQ, PT_WEIGHTS_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT

TRL = "trl"
OPENRLHF = "openrlhf"
SEQCLS = "seqcls"
DEEPSPEED_CHAT = "deepspeed-chat"

EXPORT_FORMATS = (TRL, OPENRLHF, SEQCLS)
IMPORT_FORMATS = (TRL, OPENRLHF, SEQCLS, DEEPSPEED_CHAT)

# OpenRLHF: ``nn.Linear(config.hidden_size, 1, bias=False)`` stored under ``<value_head_prefix>``.
OPENRLHF_HEAD_PREFIXES = ("score", "value_head")  # newer default first, then the older one
OPENRLHF_DEFAULT_PREFIX = "score"
OPENRLHF_CONFIG_FIELDS = ("value_head_prefix", "normalize_reward", "mean", "std")
# OpenRLHF names its classes inside a factory; save_pretrained records these as architectures.
OPENRLHF_ARCHITECTURES = ("RewardModel", "CriticModel")
OPENRLHF_DEFAULT_ARCHITECTURE = "CriticModel"

# transformers' *ForSequenceClassification: ``score = nn.Linear(hidden, num_labels, bias=False)``.
SEQCLS_HEAD_WEIGHT = "score.weight"
SEQCLS_HEAD_BIAS = "score.bias"  # not written by transformers' causal classes; read if present
SEQCLS_CONFIG_FIELDS = ("id2label", "label2id", "num_labels", "problem_type")
SEQCLS_ARCH_SUFFIX = "ForSequenceClassification"

# DeepSpeed-Chat's RewardModel keeps an AutoModel (no prefix of its own) under ``rwtranrsformer``
# (sic; the misspelling is the attribute name in DeepSpeed-Chat) and ``v_head = Linear(h, 1, bias=False)``.
DEEPSPEED_CHAT_PREFIXES = ("rwtranrsformer.", "rwtransformer.")
DEEPSPEED_CHAT_HEAD_WEIGHT = "v_head.weight"

# What vhctl writes into an exported config.json so that importing it again is exact
# (the head's bias and how it was kept, the reward normalisation, the config fields it replaced).
VHCTL_EXPORT_FIELD = "vhctl_export"

# Final-norm biases a head bias can be folded into: the norm's output is the hidden state the head
# reads, so adding d = bias * w / (w . w) to the norm's bias adds exactly ``bias`` to w . h.
# model_type -> (bias key, keys whose presence rules the fold out). Only families checked by tests.
FOLDABLE_NORM_BIAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpt2": ("transformer.ln_f.bias", ()),
    "gpt_neo": ("transformer.ln_f.bias", ()),
    "gpt_neox": ("gpt_neox.final_layer_norm.bias", ()),
    "bloom": ("transformer.ln_f.bias", ()),
    # OPT projects after the norm when word_embed_proj_dim != hidden_size (opt-350m): no fold then.
    "opt": ("model.decoder.final_layer_norm.bias", ("model.decoder.project_out.weight",)),
}

# How an exported head's bias is kept where the format's head has none (``--bias``).
BIAS_AUTO = "auto"  # zero: nothing to do; else fold into the final norm; else refuse
BIAS_NORM = "norm"  # fold into the final norm's bias (exact raw scores)
BIAS_MEAN = "mean"  # OpenRLHF only: fold into the reward mean (exact normalised rewards)
BIAS_CONFIG = "config"  # record it in config.json only (raw scores are value - bias)
BIAS_MODES = (BIAS_AUTO, BIAS_NORM, BIAS_MEAN, BIAS_CONFIG)


@dataclass(frozen=True)
class KeyMap:
    """Where one format keeps the backbone and the head (see the module docstring for ``{base}``)."""

    name: str
    title: str
    directions: tuple[str, ...]
    architectures: tuple[str, ...]
    backbone: str
    head: str
    bias: str
    config: str
    files: str
    lm_head: bool


KEYMAPS: dict[str, KeyMap] = {
    "vhctl": KeyMap(
        name="vhctl",
        title="vhctl checkpoint (v1)",
        directions=("native",),
        architectures=(ARCH_CAUSAL, ARCH_SEQ2SEQ),
        backbone="as save_pretrained writes the LM (`{base}.*` + LM head)",
        head=f"`{V_HEAD_WEIGHT}` (1, H), `{V_HEAD_BIAS}` (1,) in `value_head.safetensors`",
        bias="yes",
        config="`vhctl.json` manifest",
        files="safetensors only",
        lm_head=True,
    ),
    TRL: KeyMap(
        name=TRL,
        title="TRL <= 1.12 value-head model",
        directions=("import", "export"),
        architectures=(ARCH_CAUSAL, ARCH_SEQ2SEQ),
        backbone="as save_pretrained writes the LM",
        head=f"`{V_HEAD_WEIGHT}`, `{V_HEAD_BIAS}` inline in the weights (one file, a shard, or "
        f"`{PT_WEIGHTS_NAME}`; PEFT policy: head alone next to the adapter)",
        bias="yes",
        config="-",
        files="import: safetensors (single/sharded) or pickle; export: one `model.safetensors`",
        lm_head=True,
    ),
    OPENRLHF: KeyMap(
        name=OPENRLHF,
        title="OpenRLHF critic / reward model",
        directions=("import", "export"),
        architectures=(ARCH_CAUSAL,),
        backbone="`{base}.*` (no LM head)",
        head="`<value_head_prefix>.weight` (1, H); prefix `score` (new) or `value_head` (old)",
        bias="no (see --bias)",
        config="`value_head_prefix`, `normalize_reward`, `mean`, `std`",
        files="safetensors (single/sharded)",
        lm_head=False,
    ),
    SEQCLS: KeyMap(
        name=SEQCLS,
        title="transformers *ForSequenceClassification, num_labels=1",
        directions=("import", "export"),
        architectures=(ARCH_CAUSAL,),
        backbone="`{base}.*` (no LM head)",
        head=f"`{SEQCLS_HEAD_WEIGHT}` (1, H) (`{SEQCLS_HEAD_BIAS}` read if present)",
        bias="no (see --bias)",
        config="`architectures` = `<Model>ForSequenceClassification`, `id2label`/`label2id` (1 label)",
        files="safetensors (single/sharded)",
        lm_head=False,
    ),
    DEEPSPEED_CHAT: KeyMap(
        name=DEEPSPEED_CHAT,
        title="DeepSpeed-Chat reward / critic model",
        directions=("import",),
        architectures=(ARCH_CAUSAL,),
        backbone="`rwtranrsformer.*` (sic) or `rwtransformer.*` -> `{base}.*` (no LM head)",
        head=f"`{DEEPSPEED_CHAT_HEAD_WEIGHT}` (1, H)",
        bias="no",
        config="-",
        files=f"`{PT_WEIGHTS_NAME}` (pickle: needs --allow-pickle) or safetensors",
        lm_head=False,
    ),
}


def markdown_table() -> str:
    """The key maps as a Markdown table (the README's format table is this output)."""
    head = "| format | direction | architectures | backbone keys | head keys | head bias | config fields | files |"
    rows = [head, "|" + "---|" * 8]
    for km in KEYMAPS.values():
        rows.append(
            f"| `{km.name}` | {', '.join(km.directions)} | {', '.join(km.architectures)} | {km.backbone} "
            f"| {km.head} | {km.bias} | {km.config} | {km.files} |"
        )
    return "\n".join(rows) + "\n"


def backbone_key_to_vhctl(fmt: str, key: str, base: str) -> str | None:
    """The vhctl (causal LM) name of a foreign backbone key, or None if it is not a backbone key."""
    if fmt == DEEPSPEED_CHAT:
        for prefix in DEEPSPEED_CHAT_PREFIXES:
            if key.startswith(prefix):
                return f"{base}.{key[len(prefix) :]}"
        return None
    if fmt in (OPENRLHF, SEQCLS):
        return key if key.startswith(f"{base}.") else None
    return key


def vhctl_key_to_backbone(fmt: str, key: str, base: str) -> str | None:
    """The foreign name of a vhctl base key, or None when the format drops it (the LM head)."""
    if fmt in (OPENRLHF, SEQCLS):
        return key if key.startswith(f"{base}.") else None
    return key


def head_weight_key(fmt: str, *, value_head_prefix: str = OPENRLHF_DEFAULT_PREFIX) -> str:
    """The key of the head's (1, hidden) weight in ``fmt``."""
    if fmt == TRL:
        return V_HEAD_WEIGHT
    if fmt == OPENRLHF:
        return f"{value_head_prefix}.weight"
    if fmt == SEQCLS:
        return SEQCLS_HEAD_WEIGHT
    if fmt == DEEPSPEED_CHAT:
        return DEEPSPEED_CHAT_HEAD_WEIGHT
    raise ValueError(f"unknown format {fmt!r}")


def head_bias_key(fmt: str) -> str | None:
    """The key of the head's bias in ``fmt`` (None when the format's head has no bias)."""
    if fmt == TRL:
        return V_HEAD_BIAS
    if fmt == SEQCLS:
        return SEQCLS_HEAD_BIAS
    return None


__all__ = [
    "BIAS_MODES",
    "DEEPSPEED_CHAT",
    "EXPORT_FORMATS",
    "FOLDABLE_NORM_BIAS",
    "IMPORT_FORMATS",
    "KEYMAPS",
    "KeyMap",
    "OPENRLHF",
    "SEQCLS",
    "TRL",
    "backbone_key_to_vhctl",
    "head_bias_key",
    "head_weight_key",
    "markdown_table",
    "vhctl_key_to_backbone",
]
