"""``wrap`` of TRL's PEFT value-head layout: a vhctl PEFT policy checkpoint, the head in safetensors.

TRL 1.12 saves a value-head model with a PEFT adapter as the adapter alone (``adapter_config.json``,
``adapter_model.safetensors``) and the value head alone in ``pytorch_model.bin``, a pickle: no
config, no base weights; the adapter's ``base_model_name_or_path`` names the base. A vhctl PEFT
policy is the same folder with the head in ``value_head.safetensors`` and a manifest whose
``extra.peft_policy`` marks it, which is what ``save_pretrained`` of a PEFT value-head model writes.
The conversion works on files: the adapter is copied byte for byte, only the head is read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhctl.checkpoint.adapters import read_adapter_config, read_adapter_weights
from vhctl.checkpoint.config import detect_architecture, dropout_of, hidden_size_of, load_config
from vhctl.checkpoint.heads import check_head_state, find_head, write_head
from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo, finish_manifest
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_PT_NAME,
    ADAPTER_SAFE_NAME,
    KIND_POLICY,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.dtypes import dtype_name
from vhctl.errors import HubError, NotAModelError, SourceNotFoundError, UnsafeLoadError, UsageError
from vhctl.formats import read_reward_head
from vhctl.io.files import atomic_output_dir, link_or_copy
from vhctl.io.hub import HubToken
from vhctl.io.resolve import ResolvedModel, resolve_model

__all__ = ["PEFT_LAYOUT", "PeftPolicyResult", "wrap_peft_policy"]

# ``head_from`` of a checkpoint converted from TRL's PEFT layout.
PEFT_LAYOUT = "trl-peft"
# Files next to an adapter that may hold a value head (TRL: the pickle; vhctl's TRL export: safetensors).


@dataclass
class PeftPolicyResult:
    """What the conversion wrote (the fields of :class:`vhctl.ops.wrap.WrapResult` but the paths)."""

    architecture: str
    model_type: str
    hidden_size: int
    head_init: str
    head_from: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _resolve_base(
    source: str, adapter_config: dict[str, Any], *, token: HubToken, allow_pickle: bool
) -> ResolvedModel:
    """The base model the adapter names, found like any model (a folder or a hub id)."""
    base = adapter_config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise NotAModelError(
            f"the adapter in {source} does not name its base model (no base_model_name_or_path in "
            f"{ADAPTER_CONFIG_NAME})",
            hint="set base_model_name_or_path to the model the adapter was trained on",
        )
    revision = adapter_config.get("revision")
    try:
        return resolve_model(base, revision=revision if isinstance(revision, str) else None, token=token,
                             allow_pickle=allow_pickle)  # fmt: skip
    except (SourceNotFoundError, NotAModelError, UnsafeLoadError, HubError) as exc:  # no other arguments
        raise type(exc)(f"the base model of the adapter in {source} is not available: {exc.message}",
                        hint=exc.hint) from exc  # fmt: skip


def _copy_adapter(src: Path, dst: Path, *, link: bool, allow_pickle: bool) -> None:
    """The policy adapter at the root of ``dst``: its config as is, its weights in safetensors."""
    from safetensors.torch import save_file

    shutil.copyfile(src / ADAPTER_CONFIG_NAME, dst / ADAPTER_CONFIG_NAME)
    if (src / ADAPTER_SAFE_NAME).is_file():
        link_or_copy(src / ADAPTER_SAFE_NAME, dst / ADAPTER_SAFE_NAME, link=link)
    elif (src / ADAPTER_PT_NAME).is_file():
        weights = read_adapter_weights(src, allow_pickle=allow_pickle)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(dst / ADAPTER_SAFE_NAME),
                  metadata={"format": "pt"})  # fmt: skip
    else:
        raise NotAModelError(
            f"{src} has {ADAPTER_CONFIG_NAME} but no adapter weights ({ADAPTER_SAFE_NAME} or {ADAPTER_PT_NAME})",
            hint="point at the folder peft's save_pretrained wrote",
        )


def wrap_peft_policy(
    source: str,
    resolved: ResolvedModel,
    out: Path,
    *,
    dropout: float | None = None,
    dtype: str | None = None,
    link: bool = False,
    force: bool = False,
    token: HubToken = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    init_from_reward: str | os.PathLike[str] | None = None,
    head_options_given: bool = False,
) -> PeftPolicyResult:
    """Write the PEFT policy checkpoint of the adapter folder ``resolved`` (TRL's layout) into ``out``.

    Args:
        source: what the user named (for messages).
        resolved: the adapter folder (see :func:`vhctl.checkpoint.layout.is_peft_policy_source`).
        out: the checkpoint folder; written atomically, replaced only with ``force``.
        dropout: the head's dropout (default 0.1; the base config's ``summary_dropout_prob`` wins).
        dtype: refused: the checkpoint stores no base weights to convert.
        link: hard-link the adapter weights instead of copying them.
        allow_pickle: read a pickled head (``pytorch_model.bin``) or adapter with ``weights_only=True``.
        init_from_reward: take the head from this reward model instead of the adapter folder's.
        head_options_given: ``--init``/``--std``/``--seed`` were given (they do nothing: the head is kept).

    Returns:
        What was written.

    Raises:
        UsageError: ``dtype`` given.
        UnsafeLoadError: the head is a pickle and ``allow_pickle`` is off.
        NotAModelError: the adapter names no base model, or has no weights.
        CheckpointError: the head does not fit the base model's hidden size.
    """
    if dtype is not None:
        raise UsageError(
            f"--dtype does not apply to {source}: a PEFT adapter checkpoint holds no base weights to convert",
            hint="drop --dtype (the base model is loaded in the dtype you score or train with)",
        )
    src = resolved.path
    adapter_config = read_adapter_config(src)
    found = find_head(src, allow_pickle=allow_pickle)[0]
    if found is None:
        raise NotAModelError(
            f"{source} is a PEFT adapter without a value head",
            hint="wrap its base model, then add a reward adapter with 'vhctl attach-reward-adapter'",
        )
    base = _resolve_base(source, adapter_config, token=token, allow_pickle=allow_pickle)
    config = load_config(base.path, where=base.source, trust_remote_code=trust_remote_code)
    architecture = detect_architecture(config, where=base.source)
    hidden = hidden_size_of(config)
    check_head_state(found.state, hidden, where=f"{source}/{found.files[0]}")
    weight, bias = found.state[V_HEAD_WEIGHT], found.state[V_HEAD_BIAS]
    reward = None
    if init_from_reward is not None:
        reward = read_reward_head(
            init_from_reward, hidden_size=hidden, allow_pickle=allow_pickle, token=token
        )
        weight, bias = reward.weight, reward.bias
    head_info = ValueHeadInfo(
        file=VALUE_HEAD_NAME, hidden_size=hidden, dtype=dtype_name(weight.dtype), init="loaded", std=None,
        dropout=dropout_of(config, {"summary_dropout_prob": 0.1 if dropout is None else dropout}), seed=None,
    )  # fmt: skip
    base_source = str(Path(base.source).absolute()) if base.origin == "local" else base.source
    extra: dict[str, Any] = {
        "peft_policy": {
            "adapter_config": ADAPTER_CONFIG_NAME,
            "peft_type": str(adapter_config.get("peft_type")),
        },
        **(reward.manifest_extra() if reward is not None else {}),
    }
    manifest = Manifest(
        kind=KIND_POLICY, architecture=architecture, model_type=str(config.model_type), value_head=head_info,
        base_model={"source": base_source, "revision": base.commit or base.revision}, extra=extra,
    )  # fmt: skip
    with atomic_output_dir(out, force=force) as tmp:
        _copy_adapter(src, tmp, link=link, allow_pickle=allow_pickle)
        write_head(tmp, weight, bias)
        if not copy_tokenizer_files(src, tmp):
            copy_tokenizer_files(base.path, tmp)  # scoring needs one; the base's is the adapter's
        finish_manifest(tmp, manifest)
    notes = []
    if head_options_given and reward is None:
        notes.append("--init/--std/--seed did nothing: the source's own value head was kept")
    return PeftPolicyResult(
        architecture=architecture, model_type=str(config.model_type), hidden_size=hidden, head_init="loaded",
        head_from=f"reward:{reward.format}" if reward is not None else PEFT_LAYOUT,
        files=sorted(manifest.files), notes=notes,
    )  # fmt: skip
