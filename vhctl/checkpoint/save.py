"""Writing the vhctl checkpoint format: the base as transformers writes it, the head split out, the manifest."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTERS_DIR,
    KIND_POLICY,
    MANIFEST_NAME,
    TOKENIZER_FILES,
    V_HEAD_BIAS,
    V_HEAD_PREFIX,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import ManifestError


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_head(folder: Path, weight: torch.Tensor, bias: torch.Tensor) -> Path:
    """Write ``value_head.safetensors`` (contiguous CPU tensors, ``format: pt`` metadata)."""
    from safetensors.torch import save_file

    path = folder / VALUE_HEAD_NAME
    tensors = {
        V_HEAD_WEIGHT: weight.detach().to("cpu").contiguous().clone(),
        V_HEAD_BIAS: bias.detach().to("cpu").contiguous().clone(),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def copy_tokenizer_files(src: Path | None, dst: Path) -> list[str]:
    """Copy the tokenizer files that ``src`` has (``score`` needs a tokenizer next to the model)."""
    copied: list[str] = []
    if src is None or not src.is_dir():
        return copied
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def previous_manifest(folder: Path) -> Any:
    from vhctl.checkpoint.manifest import Manifest

    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        return Manifest.read(folder)
    except ManifestError:
        return None


def finish_manifest(folder: Path, manifest: Any, known: Mapping[str, str] | None = None) -> Any:
    """Hash every file and write ``vhctl.json`` last, so a checkpoint with a manifest is complete.

    ``known``: digests of files the caller hashed already (see :meth:`Manifest.refresh_files`).
    """
    manifest.refresh_files(folder, known)
    manifest.write(folder)
    return manifest


def save_wrapper(model: Any, folder: Path, *args: Any, **kwargs: Any) -> Any:
    """Body of ``PreTrainedModelWrapper.save_pretrained``."""
    from vhctl.checkpoint.adapters import store_adapter
    from vhctl.checkpoint.manifest import AdapterInfo, Manifest, ValueHeadInfo

    folder.mkdir(parents=True, exist_ok=True)
    old = previous_manifest(folder)
    state_dict = kwargs.pop("state_dict", None)
    kwargs.pop("safe_serialization", None)
    head_state = {k: v for k, v in model.v_head.state_dict().items()}
    if state_dict is not None:
        for key in list(state_dict):
            idx = key.find(V_HEAD_PREFIX)
            if idx >= 0:
                head_state[key[idx + len(V_HEAD_PREFIX) :]] = state_dict.pop(key)
    if (folder / MANIFEST_NAME).exists():
        # An interrupted save must not leave an old manifest vouching for new files.
        (folder / MANIFEST_NAME).unlink()

    if model.is_peft_model:
        policy = model.policy_adapter_name
        model.pretrained_model.save_pretrained(str(folder), *args, selected_adapters=[policy], **kwargs)
    else:
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        model.pretrained_model.save_pretrained(str(folder), *args, **kwargs)
    write_head(folder, head_state["summary.weight"], head_state["summary.bias"])
    source_dir = model._vhctl_source.get("dir")
    copy_tokenizer_files(Path(source_dir) if source_dir else None, folder)

    adapters: dict[str, AdapterInfo] = {}
    for name, src in model._vhctl_reward_adapters.items():
        adapters[name] = store_adapter(src, folder / ADAPTERS_DIR / name, name)
    if old is not None:
        for name, info in old.adapters.items():
            if name not in adapters and (folder / info.path / ADAPTER_CONFIG_NAME).is_file():
                adapters[name] = info

    config = model.pretrained_model.config
    weight = model.v_head.summary.weight
    head_info = ValueHeadInfo(
        file=VALUE_HEAD_NAME,
        hidden_size=int(weight.shape[1]),
        dtype=dtype_name(weight.dtype),
        init=model._vhctl_head_init.get("init", "random"),
        std=model._vhctl_head_init.get("std"),
        dropout=float(getattr(model.v_head, "dropout_prob", 0.0)),
        seed=model._vhctl_head_init.get("seed"),
    )
    references = [r for r in (old.references if old else []) if (folder / r / MANIFEST_NAME).is_file()]
    extra: dict[str, Any] = {}
    if model.is_peft_model:
        peft_cfg = model.pretrained_model.peft_config[model.policy_adapter_name]
        extra["peft_policy"] = {"adapter_config": ADAPTER_CONFIG_NAME, "peft_type": str(peft_cfg.peft_type)}
    manifest = Manifest(
        kind=KIND_POLICY,
        architecture=model.architecture,
        model_type=str(config.model_type),
        value_head=head_info,
        base_model={
            "source": model._vhctl_source.get("source") or getattr(config, "_name_or_path", None) or None,
            "revision": model._vhctl_source.get("revision"),
        },
        frozen=model._vhctl_frozen,
        references=references,
        adapters=adapters,
        extra=extra,
    )
    return finish_manifest(folder, manifest)
