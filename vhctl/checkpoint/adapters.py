"""PEFT reward adapters: read, check against a base model, store under ``adapters/<name>/``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vhctl.checkpoint.config import auto_class_for
from vhctl.checkpoint.heads import load_pickle_weights, read_safetensors_keys
from vhctl.checkpoint.manifest import AdapterInfo
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_PT_NAME,
    ADAPTER_SAFE_NAME,
    ADAPTERS_DIR,
)
from vhctl.errors import AdapterError
from vhctl.io.files import safe_relpath
from vhctl.io.hub import HubToken
from vhctl.io.resolve import resolve_model

__all__ = [
    "check_adapter_fits",
    "read_adapter_config",
    "read_adapter_weights",
    "read_reward_adapter",
    "resolve_adapter_dir",
    "score_state_of",
    "store_adapter",
]


def resolve_adapter_dir(
    adapter: str | os.PathLike[str],
    *,
    token: HubToken = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    folder = resolve_model(adapter, revision=revision, token=token, allow_pickle=allow_pickle).path
    if not (folder / ADAPTER_CONFIG_NAME).is_file():
        raise AdapterError(
            f"{adapter} is not a PEFT adapter: no {ADAPTER_CONFIG_NAME}",
            hint="point at a folder saved by peft's save_pretrained",
        )
    return folder


def read_adapter_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder / ADAPTER_CONFIG_NAME} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or "peft_type" not in data:
        raise AdapterError(f"{folder / ADAPTER_CONFIG_NAME} has no peft_type: not a PEFT adapter config")
    return data


def read_adapter_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The adapter's tensors, from safetensors, or from a pickle only when allowed (``weights_only``)."""
    if (folder / ADAPTER_SAFE_NAME).is_file():
        return read_safetensors_keys(folder / ADAPTER_SAFE_NAME)
    if (folder / ADAPTER_PT_NAME).is_file():
        return load_pickle_weights(folder / ADAPTER_PT_NAME, allow_pickle=allow_pickle)
    raise AdapterError(
        f"{folder} has no {ADAPTER_SAFE_NAME}", hint="save the adapter with peft's save_pretrained"
    )


def score_state_of(weights: dict[str, torch.Tensor], *, where: str) -> dict[str, torch.Tensor]:
    """The ``score`` Linear of a sequence-classification adapter (``weight`` and maybe ``bias``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        parts = key.split(".")
        if "score" in parts and parts[-1] in ("weight", "bias"):
            out[parts[-1]] = value
    if "weight" not in out:
        raise AdapterError(
            f"the adapter in {where} has no score head",
            hint="a reward adapter is a SEQ_CLS PEFT adapter saved with modules_to_save=['score']",
        )
    return out


def read_reward_adapter(
    adapter: str | os.PathLike[str], *, token: HubToken = None, allow_pickle: bool = False
) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = resolve_adapter_dir(adapter, token=token, allow_pickle=allow_pickle)
    weights = read_adapter_weights(folder, allow_pickle=allow_pickle)
    return folder, score_state_of(weights, where=str(folder))


def _module_dims(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a Linear-like module (nn.Linear or transformers' Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "nx") and hasattr(module, "nf"):
        return int(module.nx), int(module.nf)
    return None


def check_adapter_fits(
    folder: Path, *, config: Any, architecture: str, hidden_size: int, where: str | None = None
) -> dict[str, Any]:
    """Refuse an adapter made for another base model.

    Checks the ``score`` head's width against the hidden size, the base model type when the adapter
    names a readable local base, and every LoRA matrix against the module it adapts in this base
    (built on the meta device from the config, so nothing is loaded). ``where`` names the adapter
    in messages (default: ``folder``, which may be a temporary copy).
    """
    shown = where or str(folder)
    adapter_config = read_adapter_config(folder)
    weights = read_adapter_weights(folder)
    score = score_state_of(weights, where=shown)
    width = int(score["weight"].shape[-1])
    if width != hidden_size:
        raise AdapterError(
            f"the adapter in {shown} was made for a model of hidden size {width}, the checkpoint's is {hidden_size}",
            hint="use an adapter trained on this checkpoint's base model",
        )
    base_type = _adapter_model_type(folder, adapter_config)
    if base_type is not None and base_type != config.model_type:
        raise AdapterError(
            f"the adapter in {shown} was made for a {base_type} model, the checkpoint is {config.model_type}",
            hint="use an adapter trained on this checkpoint's base model",
        )
    with torch.device("meta"):
        model = auto_class_for(architecture).from_config(config)
    modules = dict(model.named_modules())
    for key, value in weights.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker not in key:
                continue
            path = key.split(marker)[0]
            for prefix in ("base_model.model.", "model."):
                if path.startswith(prefix) and path[len(prefix) :] in modules:
                    path = path[len(prefix) :]
                    break
            target = modules.get(path)
            dims = _module_dims(target) if target is not None else None
            if dims is None:
                raise AdapterError(
                    f"the adapter in {shown} adapts {path!r}, which this {config.model_type} base does not have",
                    hint="use an adapter trained on this checkpoint's base model",
                )
            want = dims[0] if part == "lora_A" else dims[1]
            got = int(value.shape[1] if part == "lora_A" else value.shape[0])
            if got != want:
                raise AdapterError(
                    f"the adapter in {shown} has {part} of width {got} for {path!r}, the base needs {want}",
                    hint="use an adapter trained on this checkpoint's base model",
                )
    return adapter_config


def _adapter_model_type(folder: Path, config: dict[str, Any]) -> str | None:
    """The base model type an adapter names, when its base is a readable local folder."""
    base = config.get("base_model_name_or_path")
    if isinstance(base, str) and os.path.isdir(base) and (Path(base) / "config.json").is_file():
        try:
            return json.loads((Path(base) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            return None
    return None


def store_adapter(
    src: str | os.PathLike[str],
    dest: Path,
    name: str,
    *,
    allow_pickle: bool = False,
    token: HubToken = None,
    revision: str | None = None,
) -> Any:
    """Copy an adapter into ``dest`` (``adapters/<name>/`` of a checkpoint) as safetensors.

    Returns its manifest entry. A pickle adapter is converted only when allowed.
    """
    from safetensors.torch import save_file

    name = safe_relpath(name, what="adapter name")
    if "/" in name:
        raise AdapterError(f"adapter name {name!r} must be a single folder name")
    folder = resolve_adapter_dir(src, token=token, revision=revision, allow_pickle=allow_pickle)
    config = read_adapter_config(folder)
    weights = read_adapter_weights(folder, allow_pickle=allow_pickle)
    score = score_state_of(weights, where=str(folder))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / ADAPTER_CONFIG_NAME).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    save_file(
        {k: v.contiguous() for k, v in weights.items()},
        str(dest / ADAPTER_SAFE_NAME),
        metadata={"format": "pt"},
    )
    return AdapterInfo(
        path=f"{ADAPTERS_DIR}/{name}",
        peft_type=str(config.get("peft_type")),
        task_type=config.get("task_type"),
        base_model=config.get("base_model_name_or_path"),
        hidden_size=int(score["weight"].shape[-1]),
        role="reward",
    )
