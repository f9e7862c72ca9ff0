"""``wrap``: turn a base model (or a TRL-style checkpoint) into a vhctl checkpoint at the file level.

Base weights are copied (or hard-linked) byte for byte; they are deserialised only when they must
change: a TRL layout whose files also hold the head, a dtype conversion, or pickle-only weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ARCH_CAUSAL,
    ARCH_SEQ2SEQ,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    KIND_POLICY,
    SAFE_WEIGHTS_INDEX_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.checkpoint.config import detect_architecture, load_config, quiet_transformers
from vhctl.dtypes import canonical_dtype, torch_dtype
from vhctl.errors import NotAModelError, UnsafeLoadError, UnsupportedModelError, UsageError

if TYPE_CHECKING:
    from vhctl.io.files import BackgroundHasher

INITS = ("random", "normal")


@dataclass
class WrapResult:
    out: Path
    source: str
    architecture: str
    model_type: str
    hidden_size: int
    head_init: str
    head_from: str | None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def init_head(hidden_size: int, *, init: str, std: float, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A new head's tensors; the same seed gives the same bytes.

    ``random`` is PyTorch's default ``Linear`` init (uniform in +-1/sqrt(hidden) for weight and bias);
    ``normal`` draws the weight from N(0, std) and zeroes the bias (TRL's ``"normal"`` strategy).
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    if init == "normal":
        weight = torch.empty(1, hidden_size).normal_(0.0, std, generator=generator)
        bias = torch.zeros(1)
    else:
        bound = 1.0 / math.sqrt(hidden_size)
        weight = torch.empty(1, hidden_size).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(1).uniform_(-bound, bound, generator=generator)
    return weight, bias


def check_head_options(init: str, std: float | None, dropout: float | None) -> None:
    if init not in INITS:
        raise UsageError(f"unknown --init {init!r}", hint=f"use one of: {', '.join(INITS)}")
    if std is not None and (not math.isfinite(std) or std <= 0):
        raise UsageError(f"--std must be a positive number, got {std}")
    if dropout is not None and (not math.isfinite(dropout) or not 0.0 <= dropout < 1.0):
        raise UsageError(f"--dropout must be in [0, 1), got {dropout}")


def _remote_code_files(src: Path, config: Any) -> list[str]:
    """The local ``*.py`` modules a config's ``auto_map`` names (``module.Class``), which a trusted
    remote-code checkpoint needs next to its config."""
    auto_map = getattr(config, "auto_map", None) or {}
    names: set[str] = set()
    for value in auto_map.values():
        for ref in value if isinstance(value, list | tuple) else [value]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                module = ref.rsplit(".", 1)[0]
                if "/" not in module and (src / f"{module}.py").is_file():
                    names.add(f"{module}.py")
    return sorted(names)


def _detect(config: Any, *, where: str, trust_remote_code: bool) -> str:
    """Causal or seq2seq; a trusted remote-code model says which through its ``auto_map``."""
    try:
        return detect_architecture(config, where=where)
    except UnsupportedModelError:
        auto_map = getattr(config, "auto_map", None) or {}
        if trust_remote_code and "AutoModelForSeq2SeqLM" in auto_map:
            return ARCH_SEQ2SEQ
        if trust_remote_code and "AutoModelForCausalLM" in auto_map:
            return ARCH_CAUSAL
        raise


def _strip_head_from_safetensors(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """Rewrite one weight file without its ``v_head`` keys (and cast floats to ``dtype`` if given)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(src), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():
            if "v_head." in key:
                continue
            tensor = handle.get_tensor(key)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensors[key] = tensor
    metadata = {**metadata, "format": "pt"}
    save_file(tensors, str(dst), metadata=metadata)


def _copy_safetensors_base(src: Path, dst: Path, *, head_files: list[str], dtype: torch.dtype | None,
                           link: bool, hasher: BackgroundHasher | None = None) -> dict[str, str]:
    """Copy (or link) the base's weight files; rewrite those holding ``v_head`` keys or needing ``dtype``.

    Returns the sha256 of the files copied verbatim that ``hasher`` hashed at the source meanwhile.
    """
    from vhctl.checkpoint.tensors import weight_files
    from vhctl.io.files import link_or_copy

    written = []
    known: dict[str, str] = {}
    for rel in weight_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel in head_files or dtype is not None:
            _strip_head_from_safetensors(src / rel, dst / rel, dtype)
        else:
            link_or_copy(src / rel, dst / rel, link=link)
            digest = hasher.digest(src / rel) if hasher is not None else None
            if digest is not None and (dst / rel).stat().st_size == (src / rel).stat().st_size:
                known[rel] = digest
        written.append(rel)
    index = src / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if "v_head." not in k}
        if dtype is not None or head_files:
            total = sum((dst / rel).stat().st_size for rel in written)
            data.setdefault("metadata", {})["total_size"] = total
        (dst / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return known


def _convert_pickle_base(src: Path, dst: Path, architecture: str, dtype: torch.dtype | None) -> list[str]:
    """Pickle-only weights (allowed by the caller): load with transformers and write safetensors."""
    from vhctl.checkpoint.config import auto_class_for

    with quiet_transformers():
        model = auto_class_for(architecture).from_pretrained(
            str(src), use_safetensors=False, trust_remote_code=False, dtype=dtype or "auto"
        )
    model.save_pretrained(str(dst))
    return [p.name for p in dst.iterdir() if p.name.startswith("model")]


def wrap_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    init: str = "random",
    std: float | None = None,
    dropout: float | None = None,
    seed: int | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    link: bool = False,
    token: Any = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    init_from_reward: str | os.PathLike[str] | None = None,
) -> WrapResult:
    """Write a vhctl checkpoint for ``source`` into ``out`` (atomically).

    Args:
        source: hub id, local folder, TRL-style checkpoint or ``"vhctl:tiny"``.
        out: the checkpoint folder to create; replaced only with ``force``.
        init: ``random`` (PyTorch default) or ``normal`` (N(0, std), zero bias) for a new head; a head
            found in ``source`` is kept instead.
        std: standard deviation for ``normal`` (default 0.2, TRL's ``v_head_initializer_range``).
        dropout: the head's dropout (default 0.1; a config's ``summary_dropout_prob`` wins, as in TRL).
        seed: makes the head file byte-identical across runs.
        dtype: convert the base's floating-point weights (``float32``, ``bfloat16``, ``float16``).
        link: hard-link unchanged base files instead of copying them (same filesystem only).
        allow_pickle: read pickle weights (``pytorch_model.bin``) with ``weights_only=True``.
        trust_remote_code: run the model folder's own code (``auto_map`` in its config); off by
            default, and then such a config is refused rather than executed.
        init_from_reward: take the head from this reward model's score head (see
            :func:`vhctl.formats.read_reward_head`) instead of the source's or a new one.

    OpenRLHF, sequence-classification and DeepSpeed-Chat folders are recognised and converted by
    :mod:`vhctl.formats` (their heads are kept).
    """
    from vhctl.checkpoint.heads import check_head_state, find_head
    from vhctl.checkpoint.tensors import has_pickle_weights, has_safetensors_weights
    from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo
    from vhctl.checkpoint.save import copy_tokenizer_files, dtype_name, finish_manifest, write_head
    from vhctl.io.files import atomic_output_dir
    from vhctl.checkpoint.config import hidden_size_of
    from vhctl.modeling.value_head import dropout_of

    check_head_options(init, std, dropout)
    if dtype is not None:
        dtype = canonical_dtype(dtype)
    target_dtype = torch_dtype(dtype) if dtype is not None else None
    from vhctl.hub import resolve_model

    resolved = resolve_model(source, revision=revision, token=token, allow_pickle=allow_pickle)
    src = resolved.path
    out_path = Path(out).absolute()
    if out_path == src.absolute() or src.absolute() in out_path.parents:
        raise UsageError(f"--out {out_path} is inside the source model folder", hint="choose a folder elsewhere")
    if (src / ADAPTER_CONFIG_NAME).is_file() and not (src / CONFIG_NAME).is_file():
        raise NotAModelError(
            f"{source} is a PEFT adapter, not a model",
            hint="wrap its base model, then add a reward adapter with 'vhctl attach-reward-adapter'",
        )
    hasher = None
    with contextlib.ExitStack() as stack:
        if target_dtype is None and has_safetensors_weights(src):
            # Hash the weights while transformers is imported and they are copied (neither reads
            # them), instead of reading them a second time for the manifest at the end.
            from vhctl.checkpoint.tensors import weight_files
            from vhctl.io.files import BackgroundHasher

            hasher = stack.enter_context(BackgroundHasher())
            for rel in weight_files(src):
                hasher.submit(src / rel)

        config = load_config(src, where=str(source), trust_remote_code=trust_remote_code)
        architecture = _detect(config, where=str(source), trust_remote_code=trust_remote_code)
        hidden = hidden_size_of(config)
        if not has_safetensors_weights(src) and not has_pickle_weights(src):
            raise NotAModelError(f"{source} holds a config but no weights", hint="point at a saved model folder")
        from vhctl.formats import detect_foreign_layout, import_foreign, read_reward_head

        foreign = detect_foreign_layout(src, allow_pickle=allow_pickle)
        found = None if foreign is not None else find_head(src, allow_pickle=allow_pickle)[0]
        reward = None if init_from_reward is None else read_reward_head(
            init_from_reward, hidden_size=hidden, allow_pickle=allow_pickle, token=token
        )
        if found is not None:
            check_head_state(found.state, hidden, where=f"{source}/{found.files[0]}")
        effective_dropout = dropout_of(config, {"summary_dropout_prob": 0.1 if dropout is None else dropout})

        imported = None
        known: dict[str, str] = {}
        if foreign is not None and hasher is not None:
            hasher.close()  # converted, not copied: the source's digests are of no use
        with atomic_output_dir(out_path, force=force) as tmp:
            if foreign is not None:
                imported = import_foreign(foreign, tmp, config=config, dtype=target_dtype)
            elif has_safetensors_weights(src):
                known = _copy_safetensors_base(
                    src, tmp, head_files=found.base_files if found else [], dtype=target_dtype, link=link,
                    hasher=hasher,
                )
                config_data = json.loads((src / CONFIG_NAME).read_text(encoding="utf-8"))
                if target_dtype is not None:
                    config_data["dtype"] = dtype
                    config_data.pop("torch_dtype", None)
                (tmp / CONFIG_NAME).write_text(json.dumps(config_data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
                if (src / GENERATION_CONFIG_NAME).is_file():
                    shutil.copyfile(src / GENERATION_CONFIG_NAME, tmp / GENERATION_CONFIG_NAME)
            else:
                if not allow_pickle:
                    raise UnsafeLoadError(
                        f"{source} holds only pickle weights",
                        hint="pass --allow-pickle to convert them (read with weights_only=True)",
                    )
                _convert_pickle_base(src, tmp, architecture, target_dtype)
            copy_tokenizer_files(src, tmp)
            if trust_remote_code:
                for name in _remote_code_files(src, config):
                    shutil.copyfile(src / name, tmp / name)
            if reward is not None or imported is not None:
                head = reward if reward is not None else imported
                weight, bias = head.weight, head.bias
                head_init, head_std, head_seed = "loaded", None, None
            elif found is not None:
                weight, bias = found.state[V_HEAD_WEIGHT], found.state[V_HEAD_BIAS]
                head_init, head_std, head_seed = "loaded", None, None
            else:
                head_std = 0.2 if std is None else float(std)
                weight, bias = init_head(hidden, init=init, std=head_std, seed=seed)
                head_init, head_seed = init, seed
                if init != "normal":
                    head_std = None
            write_head(tmp, weight, bias)
            manifest = Manifest(
                kind=KIND_POLICY,
                architecture=architecture,
                model_type=str(config.model_type),
                value_head=ValueHeadInfo(
                    file=VALUE_HEAD_NAME,
                    hidden_size=hidden,
                    dtype=dtype_name(weight.dtype),
                    init=head_init,
                    std=head_std,
                    dropout=effective_dropout,
                    seed=head_seed,
                ),
                base_model={
                    "source": str(Path(source).absolute()) if resolved.origin == "local" else resolved.source,
                    "revision": resolved.commit or revision,
                },
                extra={**(imported.extra if imported else {}), **(reward.manifest_extra() if reward else {})},
            )
            finish_manifest(tmp, manifest, known)
        return WrapResult(
            out=out_path,
            source=str(source),
            architecture=architecture,
            model_type=str(config.model_type),
            hidden_size=hidden,
            head_init=head_init,
            head_from=f"reward:{reward.format}" if reward else foreign.format if foreign else found.layout if found else None,
            files=sorted(manifest.files),
            notes=imported.notes if imported else [],
        )


__all__ = ["INITS", "WrapResult", "init_head", "wrap_model"]
