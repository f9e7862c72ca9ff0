"""The body of ``save_pretrained``: the vhctl checkpoint format from a value-head model in memory.

The base goes in as ``transformers`` writes it, the head into ``value_head.safetensors``, then
``vhctl.json`` last with every file's hash, so a folder with a manifest is a complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vhctl.checkpoint.adapters import store_adapter
from vhctl.checkpoint.heads import write_head
from vhctl.checkpoint.manifest import AdapterInfo, Manifest, ValueHeadInfo, finish_manifest
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTERS_DIR,
    KIND_POLICY,
    MANIFEST_NAME,
    V_HEAD_PREFIX,
    VALUE_HEAD_NAME,
)
from vhctl.dtypes import dtype_name
from vhctl.errors import ManifestError
from vhctl.io.files import share_like_cp

__all__ = ["save_wrapper"]


def _previous_manifest(folder: Path) -> Manifest | None:
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        return Manifest.read(folder)
    except ManifestError:
        return None


def _head_state(model: Any, state_dict: dict[str, Any] | None) -> dict[str, Any]:
    """The head's tensors; ``v_head.*`` entries of a given state dict win (and leave it)."""
    head_state = dict(model.v_head.state_dict())
    if state_dict is not None:
        for key in list(state_dict):
            idx = key.find(V_HEAD_PREFIX)
            if idx >= 0:
                head_state[key[idx + len(V_HEAD_PREFIX) :]] = state_dict.pop(key)
    return head_state


def _adapters(model: Any, folder: Path, old: Manifest | None) -> dict[str, AdapterInfo]:
    """Reward adapters loaded with the model, plus those an earlier save left that are still there."""
    adapters: dict[str, AdapterInfo] = {}
    for name, src in model.provenance.reward_adapters.items():
        adapters[name] = store_adapter(src, folder / ADAPTERS_DIR / name, name)
    if old is not None:
        for name, info in old.adapters.items():
            if name not in adapters and (folder / info.path / ADAPTER_CONFIG_NAME).is_file():
                adapters[name] = info
    return adapters


def save_wrapper(model: Any, folder: Path, *args: Any, **kwargs: Any) -> Manifest:
    """Write ``model`` (a value-head wrapper) into ``folder`` in the vhctl format; return its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    old = _previous_manifest(folder)
    state_dict = kwargs.pop("state_dict", None)
    kwargs.pop("safe_serialization", None)
    head_state = _head_state(model, state_dict)
    if (folder / MANIFEST_NAME).exists():
        # An interrupted save must not leave an old manifest vouching for new files.
        (folder / MANIFEST_NAME).unlink()
    if model.is_peft_model:
        model.pretrained_model.save_pretrained(
            str(folder), *args, selected_adapters=[model.policy_adapter_name], **kwargs
        )
    else:
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        model.pretrained_model.save_pretrained(str(folder), *args, **kwargs)
    write_head(folder, head_state["summary.weight"], head_state["summary.bias"])
    provenance = model.provenance
    copy_tokenizer_files(Path(provenance.folder) if provenance.folder else None, folder)

    config = model.pretrained_model.config
    weight = model.v_head.summary.weight
    head_info = ValueHeadInfo(
        file=VALUE_HEAD_NAME,
        hidden_size=int(weight.shape[1]),
        dtype=dtype_name(weight.dtype),
        init=provenance.head_init,
        std=provenance.head_std,
        dropout=float(getattr(model.v_head, "dropout_prob", 0.0)),
        seed=provenance.head_seed,
    )
    extra: dict[str, Any] = {}
    if model.is_peft_model:
        peft_cfg = model.pretrained_model.peft_config[model.policy_adapter_name]
        peft_type = getattr(peft_cfg.peft_type, "value", peft_cfg.peft_type)  # "LORA", not "PeftType.LORA"
        extra["peft_policy"] = {"adapter_config": ADAPTER_CONFIG_NAME, "peft_type": str(peft_type)}
    manifest = Manifest(
        kind=KIND_POLICY,
        architecture=model.architecture,
        model_type=str(config.model_type),
        value_head=head_info,
        base_model={
            "source": provenance.source or getattr(config, "_name_or_path", None) or None,
            "revision": provenance.revision,
        },
        frozen=provenance.frozen,
        references=[r for r in (old.references if old else []) if (folder / r / MANIFEST_NAME).is_file()],
        adapters=_adapters(model, folder, old),
        extra=extra,
    )
    finish_manifest(folder, manifest)
    share_like_cp(folder, [*manifest.files, MANIFEST_NAME])
    return manifest
