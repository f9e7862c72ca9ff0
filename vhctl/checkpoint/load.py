"""Loading value-head models from every source ``from_pretrained`` accepts.

Sources: a vhctl checkpoint (policy or reference), a TRL-style checkpoint (head inside the weights),
a plain transformers model, a PEFT adapter folder, a hub id (through the HF cache), the embedded
tiny model, or an already built model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TINY_MODEL_NAME,
    VALUE_HEAD_NAME,
)
from vhctl.checkpoint.config import quiet_transformers, read_config_dict
from vhctl.checkpoint.tensors import has_pickle_weights, has_safetensors_weights
from vhctl.errors import (
    CheckpointError,
    IntegrityError,
    NotAModelError,
    UnsafeLoadError,
    UnsupportedModelError,
    UsageError,
)

logger = logging.getLogger("vhctl")


def resolve_source(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = False,
) -> Path:
    """A local folder for a model name: the tiny model, an existing folder, or a hub snapshot."""
    from vhctl.hub import resolve_model_dir

    return resolve_model_dir(name_or_path, revision=revision, token=token, allow_pickle=allow_pickle)


def _check_pickle_policy(folder: Path, allow_pickle: bool) -> None:
    if not has_safetensors_weights(folder) and has_pickle_weights(folder) and not allow_pickle:
        raise UnsafeLoadError(
            f"{folder} holds only pickle weights ({PT_WEIGHTS_NAME})",
            hint="pass allow_pickle=True (CLI: --allow-pickle) to read them with weights_only=True",
        )


def _check_adapter_pickle_policy(folder: Path, allow_pickle: bool) -> None:
    """PEFT would read ``adapter_model.bin`` (with weights_only=True) on its own: refuse it unless allowed."""
    from vhctl.constants import ADAPTER_PT_NAME, ADAPTER_SAFE_NAME

    if not (folder / ADAPTER_SAFE_NAME).is_file() and (folder / ADAPTER_PT_NAME).is_file() and not allow_pickle:
        raise UnsafeLoadError(
            f"the PEFT adapter in {folder} holds only pickle weights ({ADAPTER_PT_NAME})",
            hint="pass allow_pickle=True (CLI: --allow-pickle) to read them with weights_only=True",
        )


def _transformers_kwargs(model_kwargs: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    kwargs.setdefault("trust_remote_code", False)
    if not allow_pickle:
        kwargs.setdefault("use_safetensors", True)
    return kwargs


def load_base(
    parent_class: Any, folder: Path, model_args: tuple[Any, ...], model_kwargs: dict[str, Any], *, allow_pickle: bool
) -> Any:
    """Load the base model of a folder with transformers (never pickles unless allowed)."""
    _check_pickle_policy(folder, allow_pickle)
    kwargs = _transformers_kwargs(model_kwargs, allow_pickle)
    kwargs.pop("revision", None)  # the folder is already the pinned snapshot
    try:
        return parent_class.from_pretrained(str(folder), *model_args, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, UsageError | CheckpointError):
            raise
        raise CheckpointError(f"transformers could not load {folder}: {exc}") from exc


def load_reference_base(
    parent_class: Any, folder: Path, manifest: Any, model_kwargs: dict[str, Any]
) -> Any:
    """Rebuild a reference's base from its own tensors plus the policy's shared ones.

    The shared tensors' hash is checked first: a policy that trained those layers since the reference
    was made would silently give another reference model.
    """
    from safetensors import safe_open

    from vhctl.checkpoint.tensors import shared_tensors_sha256, tensor_index

    ref = manifest.reference
    if ref.policy is None:
        raise CheckpointError(f"reference {folder} does not name its policy")
    policy = (folder / ref.policy).resolve()
    if not (policy / MANIFEST_NAME).is_file():
        raise CheckpointError(
            f"the policy of reference {folder} is not at {policy}",
            hint="keep the reference inside (or next to) the policy it was made from",
        )
    digest = shared_tensors_sha256(policy, ref.shared_tensors)
    if digest != ref.shared_sha256:
        raise IntegrityError(
            f"the policy's shared tensors changed since reference {folder} was made",
            hint="make the reference again with 'vhctl make-ref'",
        )
    kwargs = _transformers_kwargs(model_kwargs, allow_pickle=False)
    kwargs.pop("revision", None)
    with quiet_transformers():
        # The shared tensors are missing from the reference's own file: transformers initialises
        # them, and they are overwritten with the policy's right after.
        model, info = parent_class.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    shared: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in tensor_index(policy).items():
        if name in set(ref.shared_tensors):
            by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in names:
                shared[name] = handle.get_tensor(name)
    uncovered = [k for k in info.get("missing_keys", []) if k not in shared]
    # Only the ties in effect (transformers 5's _tied_weights_keys lists possible ones).
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    uncovered = [k for k in uncovered if k not in tied]
    if uncovered or info.get("unexpected_keys"):
        raise CheckpointError(
            f"reference {folder} does not fit its policy: missing {uncovered[:5]}, "
            f"unexpected {list(info.get('unexpected_keys', []))[:5]}",
            hint="run 'vhctl validate' on it",
        )
    with torch.no_grad():
        _, unexpected = model.load_state_dict(shared, strict=False)
    if unexpected:
        raise CheckpointError(f"reference {folder}: shared tensors {unexpected[:5]} are not in the model")
    model.tie_weights()
    model.eval()
    return model


def _apply_peft_config(model: Any, peft_config: Any, kbit_kwargs: dict[str, Any]) -> Any:
    from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training

    if not isinstance(peft_config, PeftConfig):
        raise UsageError("peft_config must be a peft.PeftConfig instance")
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, **kbit_kwargs)
    return get_peft_model(model, peft_config)


def load_wrapper(
    cls: Any,
    source: Any,
    model_args: tuple[Any, ...],
    *,
    head_kwargs: dict[str, Any],
    model_kwargs: dict[str, Any],
    kbit_kwargs: dict[str, Any],
    peft_config: Any,
    reward_adapter: Any,
    reward_adapter_name: str,
    is_trainable: bool,
    allow_pickle: bool,
) -> Any:
    """The body of ``from_pretrained`` (see its docstring)."""
    from transformers import PreTrainedModel

    from vhctl.checkpoint.heads import check_head_state, find_head
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.checkpoint.config import hidden_size_of
    from vhctl.modeling.wrapper import _peft_model_types

    if reward_adapter is not None and not isinstance(reward_adapter, str | os.PathLike):
        raise UsageError("reward_adapter must be a local path or a hub id of a reward-modeling adapter")
    if peft_config is not None:
        from peft import PeftConfig

        if not isinstance(peft_config, PeftConfig):
            raise UsageError("peft_config must be a peft.PeftConfig instance")

    token = model_kwargs.get("token")
    revision = model_kwargs.get("revision")
    quant = model_kwargs.get("quantization_config")
    kbit = bool(
        getattr(quant, "load_in_8bit", False)
        or getattr(quant, "load_in_4bit", False)
        or model_kwargs.get("load_in_8bit")
        or model_kwargs.get("load_in_4bit")
    )
    if kbit and "device_map" not in model_kwargs:
        device = cls._get_current_device()
        model_kwargs = {**model_kwargs, "device_map": {"": device}}

    folder: Path | None = None
    manifest = None
    head_found = None
    looked: list[str] = []
    source_info: dict[str, Any] = {"source": None, "revision": revision, "dir": None}
    frozen = None

    if isinstance(source, str | os.PathLike):
        folder = resolve_source(source, revision=revision, token=token, allow_pickle=allow_pickle)
        source_info = {"source": str(source), "revision": revision, "dir": str(folder)}
        if (folder / MANIFEST_NAME).is_file():
            manifest = Manifest.read(folder)
            source_info["source"] = manifest.base_model.get("source") or str(source)
            source_info["revision"] = manifest.base_model.get("revision")
            frozen = manifest.frozen
        if (folder / ADAPTER_CONFIG_NAME).is_file():
            from peft import PeftConfig, PeftModel

            if peft_config is not None:
                logger.warning("peft_config ignored: %s already holds a PEFT adapter", source)
            _check_adapter_pickle_policy(folder, allow_pickle)
            adapter_config = PeftConfig.from_pretrained(str(folder))
            base_dir = resolve_source(
                adapter_config.base_model_name_or_path, token=token, allow_pickle=allow_pickle
            )
            base = load_base(cls.transformers_parent_class, base_dir, model_args, model_kwargs, allow_pickle=allow_pickle)
            try:
                pretrained_model = PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)
            except pickle.UnpicklingError as exc:  # weights_only=True refused what the pickle holds
                raise CheckpointError(f"cannot read the PEFT adapter in {folder}: {str(exc).splitlines()[0]}") from exc
            source_info["source"] = adapter_config.base_model_name_or_path
        elif manifest is not None and manifest.kind == KIND_REFERENCE and manifest.reference and (
            manifest.reference.shared_tensors
        ):
            pretrained_model = load_reference_base(cls.transformers_parent_class, folder, manifest, model_kwargs)
        else:
            read_config_dict(folder)
            _check_pickle_policy(folder, allow_pickle)
            from vhctl.formats import detect_foreign_layout

            foreign = detect_foreign_layout(folder, allow_pickle=allow_pickle)
            if foreign is not None:
                raise UnsupportedModelError(
                    f"{source} is a {foreign.format} checkpoint, which from_pretrained does not convert",
                    hint=f"convert it once with 'vhctl wrap {source} --out DIR' and load DIR",
                )
            head_found, looked = find_head(folder, allow_pickle=allow_pickle)
            quiet = head_found is not None and head_found.layout != "vhctl"
            with quiet_transformers() if quiet else contextlib.nullcontext():
                pretrained_model = load_base(
                    cls.transformers_parent_class, folder, model_args, model_kwargs, allow_pickle=allow_pickle
                )
            if peft_config is not None:
                pretrained_model = _apply_peft_config(pretrained_model, peft_config, kbit_kwargs)
        if head_found is None:
            head_found, more = find_head(folder, allow_pickle=allow_pickle)
            looked = looked or more
    elif isinstance(source, (PreTrainedModel, *_peft_model_types())):
        pretrained_model = source
        if peft_config is not None and isinstance(source, PreTrainedModel):
            pretrained_model = _apply_peft_config(source, peft_config, kbit_kwargs)
        name = getattr(getattr(source, "config", None), "_name_or_path", None)
        source_info = {"source": name or None, "revision": None, "dir": None}
    else:
        raise UsageError(
            "pretrained_model_name_or_path must be a hub id, a folder, a PreTrainedModel or a PeftModel, "
            f"not {type(source).__name__}"
        )

    is_peft = isinstance(pretrained_model, _peft_model_types())
    if is_peft:
        from peft import PromptLearningConfig

        if isinstance(getattr(pretrained_model, "active_peft_config", None), PromptLearningConfig):
            raise UsageError("prompt-learning PEFT configs are not supported for value-head models")
    if reward_adapter is not None and not is_peft:
        raise UsageError("reward_adapter can only be used with a PEFT model", hint="pass a peft_config too")

    multi: dict[str, Any] = {"supports_rm_adapter": False}
    if reward_adapter is not None:
        score = cls.add_and_load_reward_modeling_adapter(pretrained_model, str(reward_adapter), reward_adapter_name, token=token)
        multi = {"score_module": score, "supports_rm_adapter": True, "rm_adapter_name": reward_adapter_name}

    if manifest is not None and "summary_dropout_prob" not in head_kwargs:
        head_kwargs = {**head_kwargs, "summary_dropout_prob": manifest.value_head.dropout}
    model = cls(pretrained_model, **multi, **head_kwargs)
    if frozen and frozen.get("num_shared_layers") is not None:
        freeze_shared(model.pretrained_model, int(frozen["num_shared_layers"]), frozen.get("pattern"))
    model.current_device = cls._get_current_device()
    model._vhctl_source = source_info
    model._vhctl_frozen = frozen
    if reward_adapter is not None:
        model._vhctl_reward_adapters[reward_adapter_name] = str(reward_adapter)

    if folder is not None:
        if head_found is not None:
            hidden = hidden_size_of(pretrained_model.config)
            check_head_state(head_found.state, hidden, where=str(folder / head_found.files[0]))
            model.post_init(state_dict=dict(head_found.state))
            info = manifest.value_head if manifest is not None else None
            model._vhctl_head_init = {
                "init": info.init if info is not None else "loaded",
                "std": info.std if info is not None else None,
                "seed": info.seed if info is not None else None,
            }
        else:
            if manifest is not None:
                raise CheckpointError(
                    f"vhctl checkpoint {folder} has no {VALUE_HEAD_NAME}", hint="run 'vhctl validate' on it"
                )
            logger.warning(
                "no value head found in %s (looked in %s): a new head was initialised (%s). This is expected "
                "when starting from a base model, not when resuming PPO training.",
                folder,
                ", ".join(looked),
                model._vhctl_head_init["init"],
            )
            model._place_head_by_device_map()
    else:
        state = pretrained_model.state_dict() if not is_peft else {}
        model.post_init(state_dict={k: v for k, v in state.items() if "v_head." in k})
    return model


def freeze_shared(model: Any, num_shared_layers: int, pattern: str | None) -> None:
    """Freeze what a reference shares with this policy, as its manifest records.

    Training those layers would change the reference too (its hash check would then refuse it).
    """
    from vhctl.modeling.reference import split_shared

    params = dict(model.named_parameters(remove_duplicate=False))
    shared, _ = split_shared(list(params), num_shared_layers, pattern)
    for name in shared:
        params[name].requires_grad_(False)


def load_checkpoint(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Load any checkpoint vhctl reads with the right class (causal or seq2seq, from the config)."""
    from vhctl.modeling.arch import detect_architecture
    from vhctl.modeling.causal import AutoModelForCausalLMWithValueHead
    from vhctl.modeling.seq2seq import AutoModelForSeq2SeqLMWithValueHead

    folder = resolve_source(path, revision=kwargs.get("revision"), token=kwargs.get("token"),
                            allow_pickle=bool(kwargs.get("allow_pickle", False)))
    if (folder / ADAPTER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file():
        from peft import PeftConfig

        base = resolve_source(PeftConfig.from_pretrained(str(folder)).base_model_name_or_path)
        config_dir = base
    else:
        config_dir = folder
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            str(config_dir), trust_remote_code=bool(kwargs.get("trust_remote_code", False))
        )
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"{config_dir} holds no readable transformers config: {exc}") from exc
    arch = detect_architecture(config, where=str(path))
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "seq2seq-lm" else AutoModelForCausalLMWithValueHead
    if isinstance(path, str) and path == TINY_MODEL_NAME:
        path = folder
    return cls.from_pretrained(str(folder) if not isinstance(path, str) else path, **kwargs)


