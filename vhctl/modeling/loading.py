"""The body of ``from_pretrained``: a value-head model from every source it accepts.

Sources: a vhctl checkpoint (policy or reference), a TRL-style checkpoint (head inside the weights),
a plain transformers model, a PEFT adapter folder, a hub id (through the HF cache), the embedded
tiny model, or an already built model. A name is resolved and its manifest read once
(:func:`open_source`); callers that already did it (``vhctl score``) pass the :class:`Source`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vhctl.checkpoint.config import hidden_size_of, quiet_transformers, read_config_dict
from vhctl.checkpoint.heads import FoundHead, check_head_state, find_head
from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.tensors import (
    has_pickle_weights,
    has_safetensors_weights,
    shared_tensors_sha256,
    tensor_index,
)
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_PT_NAME,
    ADAPTER_SAFE_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    PT_WEIGHTS_NAME,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, IntegrityError, UnsafeLoadError, UnsupportedModelError, UsageError
from vhctl.formats import detect_foreign_layout
from vhctl.io.hub import HubToken
from vhctl.io.resolve import ResolvedModel, resolve_model
from vhctl.modeling.peft_types import peft_model_types
from vhctl.modeling.provenance import Provenance
from vhctl.modeling.reference import split_shared

if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["LoadOptions", "Source", "freeze_shared", "load_base", "load_wrapper", "open_source"]

logger = logging.getLogger("vhctl")


@dataclass(frozen=True)
class Source:
    """A model name resolved to a local folder, with its manifest (None: not a vhctl checkpoint)."""

    resolved: ResolvedModel
    manifest: Manifest | None
    name: str

    @property
    def folder(self) -> Path:
        return self.resolved.path


def open_source(
    name: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: HubToken = None,
    allow_pickle: bool = False,
) -> Source:
    """Resolve ``name`` (tiny model, folder or hub id) and read its manifest, once."""
    resolved = resolve_model(name, revision=revision, token=token, allow_pickle=allow_pickle)
    manifest = Manifest.read(resolved.path) if (resolved.path / MANIFEST_NAME).is_file() else None
    return Source(resolved, manifest, os.fspath(name))


@dataclass
class LoadOptions:
    """``from_pretrained``'s keyword arguments, split by who takes them."""

    head_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    kbit_kwargs: dict[str, Any] = field(default_factory=dict)
    model_args: tuple[Any, ...] = ()
    peft_config: PeftConfig | None = None  # checked when loading: these come from the caller's kwargs
    reward_adapter: str | os.PathLike[str] | None = None
    reward_adapter_name: str = "reward_adapter"
    is_trainable: bool = False
    allow_pickle: bool = False


@dataclass
class _Loaded:
    """What the source gave: the wrapped model, the head found (if any) and where it was looked for."""

    pretrained_model: Any
    provenance: Provenance
    folder: Path | None = None
    manifest: Manifest | None = None
    head: FoundHead | None = None
    looked: list[str] = field(default_factory=list)


def _check_pickle_policy(folder: Path, allow_pickle: bool) -> None:
    if not has_safetensors_weights(folder) and has_pickle_weights(folder) and not allow_pickle:
        raise UnsafeLoadError(
            f"{folder} holds only pickle weights ({PT_WEIGHTS_NAME})",
            hint="pass allow_pickle=True (CLI: --allow-pickle) to read them with weights_only=True",
        )


def _check_adapter_pickle_policy(folder: Path, allow_pickle: bool) -> None:
    """PEFT would read ``adapter_model.bin`` (with weights_only=True) on its own: refuse it unless allowed."""
    if (
        not (folder / ADAPTER_SAFE_NAME).is_file()
        and (folder / ADAPTER_PT_NAME).is_file()
        and not allow_pickle
    ):
        raise UnsafeLoadError(
            f"the PEFT adapter in {folder} holds only pickle weights ({ADAPTER_PT_NAME})",
            hint="pass allow_pickle=True (CLI: --allow-pickle) to read them with weights_only=True",
        )


def _transformers_kwargs(model_kwargs: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    kwargs.setdefault("trust_remote_code", False)
    if not allow_pickle:
        kwargs.setdefault("use_safetensors", True)
    kwargs.pop("revision", None)  # the folder is already the pinned snapshot
    return kwargs


def load_base(
    parent_class: Any,
    folder: Path,
    model_args: tuple[Any, ...],
    model_kwargs: dict[str, Any],
    *,
    allow_pickle: bool,
) -> Any:
    """Load the base model of a folder with transformers (never pickles unless allowed)."""
    _check_pickle_policy(folder, allow_pickle)
    kwargs = _transformers_kwargs(model_kwargs, allow_pickle)
    try:
        return parent_class.from_pretrained(str(folder), *model_args, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, UsageError | CheckpointError):
            raise
        raise CheckpointError(f"transformers could not load {folder}: {exc}") from exc


def _policy_of(folder: Path, manifest: Manifest) -> Path:
    """The policy folder of a reference, once the shared tensors' hash is checked.

    A policy that trained those layers since the reference was made would silently give another
    reference model.
    """
    ref = manifest.reference
    if ref is None or ref.policy is None:
        raise CheckpointError(f"reference {folder} does not name its policy")
    policy = (folder / ref.policy).resolve()
    if not (policy / MANIFEST_NAME).is_file():
        raise CheckpointError(
            f"the policy of reference {folder} is not at {policy}",
            hint="keep the reference inside (or next to) the policy it was made from",
        )
    if shared_tensors_sha256(policy, ref.shared_tensors) != ref.shared_sha256:
        raise IntegrityError(
            f"the policy's shared tensors changed since reference {folder} was made",
            hint="make the reference again with 'vhctl make-ref'",
        )
    return policy


def load_reference_base(
    parent_class: Any, folder: Path, manifest: Manifest, model_kwargs: dict[str, Any]
) -> Any:
    """Rebuild a reference's base from its own tensors plus the policy's shared ones."""
    from safetensors import safe_open

    policy = _policy_of(folder, manifest)
    names = set(manifest.reference.shared_tensors if manifest.reference else [])
    kwargs = _transformers_kwargs(model_kwargs, allow_pickle=False)
    with quiet_transformers():
        # The shared tensors are missing from the reference's own file: transformers initialises
        # them, and they are overwritten with the policy's right after.
        model, info = parent_class.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in tensor_index(policy).items():
        if name in names:
            by_file.setdefault(file, []).append(name)
    shared: dict[str, torch.Tensor] = {}
    for file, wanted in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in wanted:
                shared[name] = handle.get_tensor(name)
    # Only the ties in effect (transformers 5's _tied_weights_keys lists possible ones).
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    uncovered = [k for k in info.get("missing_keys", []) if k not in shared and k not in tied]
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
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, **kbit_kwargs)
    return get_peft_model(model, peft_config)


def freeze_shared(model: Any, num_shared_layers: int, pattern: str | None) -> None:
    """Freeze what a reference shares with this policy, as its manifest records.

    Training those layers would change the reference too (its hash check would then refuse it).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    shared, _ = split_shared(list(params), num_shared_layers, pattern)
    for name in shared:
        params[name].requires_grad_(False)


def _check_options(options: LoadOptions) -> None:
    if options.reward_adapter is not None and not isinstance(options.reward_adapter, str | os.PathLike):
        raise UsageError("reward_adapter must be a local path or a hub id of a reward-modeling adapter")
    if options.peft_config is not None:
        from peft import PeftConfig

        if not isinstance(options.peft_config, PeftConfig):
            raise UsageError("peft_config must be a peft.PeftConfig instance")


def _with_kbit_device_map(cls: Any, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """8/4-bit models go on this process's device unless a device map is given (as TRL does)."""
    quant = model_kwargs.get("quantization_config")
    kbit = bool(
        getattr(quant, "load_in_8bit", False)
        or getattr(quant, "load_in_4bit", False)
        or model_kwargs.get("load_in_8bit")
        or model_kwargs.get("load_in_4bit")
    )
    if kbit and "device_map" not in model_kwargs:
        return {**model_kwargs, "device_map": {"": cls._get_current_device()}}
    return model_kwargs


def _load_peft_folder(cls: Any, source: Source, options: LoadOptions) -> Any:
    """A folder holding a PEFT adapter: its base model (resolved from the adapter's config), then the adapter."""
    from peft import PeftConfig, PeftModel

    folder = source.folder
    if options.peft_config is not None:
        logger.warning("peft_config ignored: %s already holds a PEFT adapter", source.name)
    _check_adapter_pickle_policy(folder, options.allow_pickle)
    adapter_config = PeftConfig.from_pretrained(str(folder))
    token = options.model_kwargs.get("token")
    base_dir = resolve_model(
        adapter_config.base_model_name_or_path, token=token, allow_pickle=options.allow_pickle
    ).path
    base = load_base(
        cls.transformers_parent_class, base_dir, options.model_args, options.model_kwargs,
        allow_pickle=options.allow_pickle,
    )  # fmt: skip
    try:
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=options.is_trainable)
    except pickle.UnpicklingError as exc:  # weights_only=True refused what the pickle holds
        raise CheckpointError(
            f"cannot read the PEFT adapter in {folder}: {str(exc).splitlines()[0]}"
        ) from exc
    return model, adapter_config.base_model_name_or_path


def _load_folder(cls: Any, source: Source, options: LoadOptions) -> _Loaded:
    """The wrapped model of a local folder (any layout ``from_pretrained`` reads) and its head."""
    folder, manifest = source.folder, source.manifest
    provenance = Provenance(
        source=source.name, revision=options.model_kwargs.get("revision"), folder=str(folder)
    )
    if manifest is not None:
        provenance.source = manifest.base_model.get("source") or source.name
        provenance.revision = manifest.base_model.get("revision")
        provenance.frozen = manifest.frozen
    loaded = _Loaded(None, provenance, folder, manifest)
    if (folder / ADAPTER_CONFIG_NAME).is_file():
        loaded.pretrained_model, provenance.source = _load_peft_folder(cls, source, options)
    elif (
        manifest is not None
        and manifest.kind == KIND_REFERENCE
        and manifest.reference
        and (manifest.reference.shared_tensors)
    ):
        loaded.pretrained_model = load_reference_base(
            cls.transformers_parent_class, folder, manifest, options.model_kwargs
        )
    else:
        read_config_dict(folder)
        _check_pickle_policy(folder, options.allow_pickle)
        foreign = detect_foreign_layout(folder, allow_pickle=options.allow_pickle)
        if foreign is not None:
            raise UnsupportedModelError(
                f"{source.name} is {foreign.title} checkpoint, which from_pretrained does not convert",
                hint=f"convert it once with 'vhctl wrap {source.name} --out DIR' and load DIR",
            )
        loaded.head, loaded.looked = find_head(folder, allow_pickle=options.allow_pickle)
        quiet = loaded.head is not None and loaded.head.layout != "vhctl"
        with quiet_transformers() if quiet else contextlib.nullcontext():
            loaded.pretrained_model = load_base(
                cls.transformers_parent_class, folder, options.model_args, options.model_kwargs,
                allow_pickle=options.allow_pickle,
            )  # fmt: skip
        if options.peft_config is not None:
            loaded.pretrained_model = _apply_peft_config(
                loaded.pretrained_model, options.peft_config, options.kbit_kwargs
            )
    if loaded.head is None:
        loaded.head, more = find_head(folder, allow_pickle=options.allow_pickle)
        loaded.looked = loaded.looked or more
    return loaded


def _load_built(source: Any, options: LoadOptions) -> _Loaded:
    """An already built ``PreTrainedModel`` or ``PeftModel``: wrapped as it is (a PEFT config applied)."""
    from transformers import PreTrainedModel

    if not isinstance(source, (PreTrainedModel, *peft_model_types())):
        raise UsageError(
            "pretrained_model_name_or_path must be a hub id, a folder, a PreTrainedModel or a PeftModel, "
            f"not {type(source).__name__}"
        )
    model = source
    if options.peft_config is not None and isinstance(source, PreTrainedModel):
        model = _apply_peft_config(source, options.peft_config, options.kbit_kwargs)
    name = getattr(getattr(source, "config", None), "_name_or_path", None)
    return _Loaded(model, Provenance(source=name or None))


def _check_peft_model(pretrained_model: Any, options: LoadOptions) -> bool:
    is_peft = isinstance(pretrained_model, peft_model_types())
    if is_peft:
        from peft import PromptLearningConfig

        if isinstance(getattr(pretrained_model, "active_peft_config", None), PromptLearningConfig):
            raise UsageError("prompt-learning PEFT configs are not supported for value-head models")
    if options.reward_adapter is not None and not is_peft:
        raise UsageError("reward_adapter can only be used with a PEFT model", hint="pass a peft_config too")
    return is_peft


def _set_head(model: Any, loaded: _Loaded) -> None:
    """Load the head found in the folder into ``model``, or keep the new one (with a warning)."""
    folder, manifest, found = loaded.folder, loaded.manifest, loaded.head
    if folder is None:
        state = model.pretrained_model.state_dict() if not model.is_peft_model else {}
        model.post_init(state_dict={k: v for k, v in state.items() if "v_head." in k})
        return
    if found is not None:
        hidden = hidden_size_of(model.pretrained_model.config)
        check_head_state(found.state, hidden, where=str(folder / found.files[0]))
        model.post_init(state_dict=dict(found.state))
        info = manifest.value_head if manifest is not None else None
        model.provenance.head_init = info.init if info is not None else "loaded"
        model.provenance.head_std = info.std if info is not None else None
        model.provenance.head_seed = info.seed if info is not None else None
        return
    if manifest is not None:
        raise CheckpointError(
            f"vhctl checkpoint {folder} has no {VALUE_HEAD_NAME}", hint="run 'vhctl validate' on it"
        )
    logger.warning(
        "no value head found in %s (looked in %s): a new head was initialised (%s). This is expected "
        "when starting from a base model, not when resuming PPO training.",
        folder,
        ", ".join(loaded.looked),
        model.provenance.head_init,
    )
    model.place_head_by_device_map()


def load_wrapper(cls: Any, source: Any, options: LoadOptions) -> Any:
    """The body of ``PreTrainedModelWrapper.from_pretrained`` (see its docstring).

    ``source`` is a name (resolved here), a :class:`Source` (resolved already) or a built model.
    """
    _check_options(options)
    options.model_kwargs = _with_kbit_device_map(cls, options.model_kwargs)
    if isinstance(source, str | os.PathLike):
        source = open_source(
            source, revision=options.model_kwargs.get("revision"), token=options.model_kwargs.get("token"),
            allow_pickle=options.allow_pickle,
        )  # fmt: skip
    loaded = (
        _load_folder(cls, source, options) if isinstance(source, Source) else _load_built(source, options)
    )
    _check_peft_model(loaded.pretrained_model, options)
    multi: dict[str, Any] = {"supports_rm_adapter": False}
    if options.reward_adapter is not None:
        score = cls.add_and_load_reward_modeling_adapter(
            loaded.pretrained_model, str(options.reward_adapter), options.reward_adapter_name,
            token=options.model_kwargs.get("token"),
        )  # fmt: skip
        multi = {
            "score_module": score,
            "supports_rm_adapter": True,
            "rm_adapter_name": options.reward_adapter_name,
        }
    head_kwargs = options.head_kwargs
    if loaded.manifest is not None and "summary_dropout_prob" not in head_kwargs:
        head_kwargs = {**head_kwargs, "summary_dropout_prob": loaded.manifest.value_head.dropout}
    model = cls(loaded.pretrained_model, **multi, **head_kwargs)
    frozen = loaded.provenance.frozen
    if frozen and frozen.get("num_shared_layers") is not None:
        freeze_shared(model.pretrained_model, int(frozen["num_shared_layers"]), frozen.get("pattern"))
    model.current_device = cls._get_current_device()
    # The new head's init (set by the constructor) with where the model came from.
    model.provenance = replace(
        loaded.provenance, head_init=model.provenance.head_init, head_std=model.provenance.head_std
    )
    if options.reward_adapter is not None:
        model.provenance.reward_adapters[options.reward_adapter_name] = str(options.reward_adapter)
    _set_head(model, loaded)
    return model
