"""File names and format constants of the vhctl checkpoint format (one place, no literals elsewhere)."""

from __future__ import annotations

__all__ = [
    "ADAPTERS_DIR",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_PT_NAME",
    "ADAPTER_SAFE_NAME",
    "ARCH_CAUSAL",
    "ARCH_SEQ2SEQ",
    "CONFIG_NAME",
    "DEFAULT_REF_DIR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GENERATION_CONFIG_NAME",
    "KIND_POLICY",
    "KIND_REFERENCE",
    "LAYER_PATTERNS",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "OLD_PREFIX",
    "PT_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "TINY_MODEL_NAME",
    "TMP_PREFIX",
    "TOKENIZER_FILES",
    "VALUE_HEAD_NAME",
    "V_HEAD_BIAS",
    "V_HEAD_PREFIX",
    "V_HEAD_WEIGHT",
]

FORMAT_NAME = "vhctl"
FORMAT_VERSION = 1

MANIFEST_NAME = "vhctl.json"
VALUE_HEAD_NAME = "value_head.safetensors"
ADAPTERS_DIR = "adapters"
DEFAULT_REF_DIR = "ref"
MODEL_CARD_NAME = "README.md"

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_SAFE_NAME = "adapter_model.safetensors"
ADAPTER_PT_NAME = "adapter_model.bin"

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)

V_HEAD_PREFIX = "v_head."
V_HEAD_WEIGHT = "v_head.summary.weight"
V_HEAD_BIAS = "v_head.summary.bias"

KIND_POLICY = "policy"
KIND_REFERENCE = "reference"
ARCH_CAUSAL = "causal-lm"
ARCH_SEQ2SEQ = "seq2seq-lm"

# The model shipped inside the package, usable by name with no network.
TINY_MODEL_NAME = "vhctl:tiny"

# Transformers' layer naming for the families vhctl knows; "{layer}" is the layer index.
LAYER_PATTERNS = (
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "model.layers.{layer}",
    "model.language_model.layers.{layer}",
    "transformer.layers.{layer}",
    "backbone.layers.{layer}",  # Mamba, Mamba2, FalconMamba
    "encoder.block.{layer}",
    "model.encoder.layers.{layer}",
)

TMP_PREFIX = ".vhctl-tmp-"
OLD_PREFIX = ".vhctl-old-"

# vhctl serve's default prefix cache, in MiB: the keys/values of recently scored token prefixes
# (vhctl.scoring.prefix_cache). About 14,000 tokens of GPT-2 124M in float32.
SERVE_PREFIX_CACHE_MB = 1024
