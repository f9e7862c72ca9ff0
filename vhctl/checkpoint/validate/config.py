"""``config.json`` and the model it describes, built on the meta device (no memory, no download).

The config check fills ``state.hidden``, ``state.architecture`` and ``state.model`` (the tensor
names, shapes and dtypes the model expects); a config transformers cannot build is a warning and
the tensor checks that need it are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vhctl.checkpoint.config import auto_class_for, detect_architecture, hidden_size_of, quiet_transformers
from vhctl.checkpoint.validate.state import CheckState, KeyMapper, ModelFacts, ModuleShape
from vhctl.constants import ARCH_CAUSAL, ARCH_SEQ2SEQ, CONFIG_NAME, MANIFEST_NAME, TINY_MODEL_NAME

__all__ = ["check_config", "model_facts"]


def check_config(state: CheckState) -> None:
    """Read config.json (or a PEFT policy's base config), compare it with the manifest, build the model."""
    config_dir = state.root
    path = state.root / CONFIG_NAME
    if not path.is_file() and state.is_peft_policy():
        base_dir = _local_base_dir(state)
        if base_dir is None or not (base_dir / CONFIG_NAME).is_file():
            state.add(
                "config-unsupported",
                None,
                "this PEFT policy's base model config is not available "
                "locally, so its adapter was not checked against the base",
            )
            return
        config_dir, path = base_dir, base_dir / CONFIG_NAME
    if not path.is_file():
        state.add("config-missing", CONFIG_NAME, "config.json is not there; the base model cannot be loaded")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        state.add("config-invalid", CONFIG_NAME, f"cannot be read as JSON: {exc}")
        return
    if not isinstance(data, dict):
        state.add("config-invalid", CONFIG_NAME, "is not a JSON object")
        return
    state.config_dict = data
    state.hidden = _fallback_hidden(data)
    m = state.manifest
    if m is not None and data.get("model_type") != m.model_type:
        state.add(
            "manifest-config-mismatch",
            MANIFEST_NAME,
            f"model_type is {m.model_type!r}, config.json says {data.get('model_type')!r}",
        )
    state.architecture = m.architecture if m is not None else None
    try:
        from transformers import AutoConfig

        with quiet_transformers(warnings_too=True):
            config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)
        state.hidden = hidden_size_of(config)
        detected = detect_architecture(config, where=CONFIG_NAME)
    except Exception as exc:  # any failure here only means we cannot check deeper
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        state.add("config-unsupported", CONFIG_NAME, f"cannot check tensors against it: {first}")
        return
    if m is not None and detected != m.architecture:
        state.add(
            "manifest-config-mismatch",
            MANIFEST_NAME,
            f"architecture is {m.architecture!r}, config.json describes a {detected} model",
        )
    state.architecture = state.architecture or detected
    _build_model(state, config)


def _local_base_dir(state: CheckState) -> Path | None:
    """The folder holding a PEFT policy's base config, found without network (cache only)."""
    base = state.manifest.base_model if state.manifest is not None else {}
    source = base.get("source")
    if not isinstance(source, str) or not source:
        return None
    if source == TINY_MODEL_NAME:
        from vhctl._tiny import tiny_model_path

        return Path(tiny_model_path())
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import try_to_load_from_cache

        revision = base.get("revision")
        found = try_to_load_from_cache(
            source, CONFIG_NAME, revision=revision if isinstance(revision, str) else None
        )
    except Exception:  # an odd repo id or cache layout only means "not found"
        return None
    return Path(found).parent if isinstance(found, str) else None


def _fallback_hidden(config: dict[str, Any]) -> int | None:
    """Hidden size from raw config.json when transformers cannot build the config."""
    for key in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(key), int):
            return int(config[key])
    for sub in ("text_config", "decoder"):
        inner = config.get(sub)
        if isinstance(inner, dict) and isinstance(inner.get("hidden_size"), int):
            return int(inner["hidden_size"])
    return None


def _build_model(state: CheckState, config: Any) -> None:
    """Build the model on the meta device (no memory) to learn the tensors it expects."""
    import torch

    arch = state.architecture if state.architecture in (ARCH_CAUSAL, ARCH_SEQ2SEQ) else ARCH_CAUSAL
    try:
        with quiet_transformers(warnings_too=True), torch.device("meta"):
            model = auto_class_for(arch).from_config(config)
    except Exception as exc:
        state.add(
            "config-unsupported",
            CONFIG_NAME,
            f"transformers cannot build this {arch} model ({type(exc).__name__}: {exc}); "
            "tensors were not checked against the config",
        )
        return
    state.model = model_facts(model)


def model_facts(model: Any) -> ModelFacts:
    """The tensors, tied groups, adaptable modules and loading rules of a (meta-device) model."""
    import torch

    tensors = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in tensors.items():
        groups.setdefault(id(t), []).append(name)
    modules: dict[str, ModuleShape] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or getattr(weight, "ndim", 0) != 2:
            continue
        if isinstance(module, torch.nn.Linear):
            modules[name] = ModuleShape("linear", module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D":  # GPT-2 style: weight is (in, out)
            modules[name] = ModuleShape("linear", weight.shape[0], weight.shape[1])
        elif isinstance(module, torch.nn.Embedding):
            modules[name] = ModuleShape("embedding", module.num_embeddings, module.embedding_dim)
    return ModelFacts(
        expected={name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()},
        tied_groups=list(groups.values()),
        modules=modules,
        keep_fp32=_patterns(model, "_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"),
        ignore_unexpected=_patterns(model, "_keys_to_ignore_on_load_unexpected"),
        ignore_missing=_patterns(model, "_keys_to_ignore_on_load_missing", "_keys_to_ignore_on_save"),
        key_mapper=_key_mapper(model, tensors),
    )


def _patterns(model: Any, *attrs: str) -> list[str]:
    return [str(p) for attr in attrs for p in (getattr(model, attr, None) or ())]


def _key_mapper(model: Any, state: dict[str, Any]) -> KeyMapper | None:
    """A function mapping checkpoint keys to model keys with transformers' own loading renames.

    transformers 5 renames keys on load and reverts them on save (``embed_out`` <-> ``lm_head`` for
    GPT-NeoX, fused MoE experts, missing ``transformer.`` prefixes in old GPT-2 files), so file keys
    and ``state_dict`` keys can differ legitimately. Returns None when that API is unavailable.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        conversions = get_model_conversion_mapping(model)
    except Exception:  # older/newer transformers without this API: compare names as they are
        return None
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None

    def mapper(name: str) -> tuple[str, bool]:
        key, pattern = rename_source_key(name, renamings, converters, prefix, state)
        return key, pattern is not None

    return mapper
