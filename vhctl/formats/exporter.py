"""``vhctl export``: write a vhctl checkpoint in the layout TRL, OpenRLHF or transformers reads.

Exports are exact: tensors are copied bit for bit under the format's names
(:mod:`vhctl.formats.keymaps`), and a head bias the format cannot hold is kept as ``--bias`` says
(see :mod:`vhctl.formats._bias`). Nothing written is a pickle; the output folder appears only
once complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vhctl._version import __version__
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    ADAPTERS_DIR,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, IntegrityError, UnsupportedModelError, UsageError
from vhctl.formats import keymaps as km
from vhctl.formats._bias import fold, foldable_key, head_fingerprint
from vhctl.formats._weights import WeightSet, read_weight_set, write_json, write_weights
from vhctl.formats.importer import IMPORTED_KEY
from vhctl.formats.normalization import NORMALIZATION_KEY, normalization_of

TRL_SHARDED_NOTE = (
    "TRL 1.12 reloads a sharded value-head checkpoint only from the hub (it looks the shards up there); "
    "push it, or export without --keep-shards to get one model.safetensors"
)


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    ``bias`` says how the head's bias was kept: ``native`` (TRL), ``zero`` (nothing to keep),
    ``norm`` (folded into ``norm_bias_key``), ``mean`` (folded into the OpenRLHF reward mean) or
    ``config`` (recorded in config.json only).
    """

    out: Path
    format: str
    source: str
    architecture: str
    model_type: str
    bias: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    norm_bias_key: str | None = None


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    keep_shards: bool = False,
    bias: str = km.BIAS_AUTO,
    value_head_prefix: str | None = None,
    revision: str | None = None,
    token: Any = None,
) -> ExportResult:
    """Export the vhctl checkpoint ``checkpoint`` to ``out`` in format ``fmt``.

    Args:
        checkpoint: a vhctl checkpoint (folder or hub id).
        fmt: ``trl``, ``openrlhf`` or ``seqcls`` (see :data:`vhctl.formats.keymaps.KEYMAPS`).
        out: the folder to create; replaced only with ``force``, and only once complete.
        keep_shards: TRL only: keep the checkpoint's shards (TRL 1.12 cannot reload those from a
            local folder). OpenRLHF and seqcls exports always keep the checkpoint's shards.
        bias: for OpenRLHF and seqcls, whose heads have no bias: ``auto`` (zero bias: nothing to do;
            else fold it into the final norm's bias where the family has one; else refuse), ``norm``,
            ``mean`` (OpenRLHF: exact normalised rewards) or ``config`` (recorded only).
        value_head_prefix: OpenRLHF head name (default ``score``; ``value_head`` for old OpenRLHF).

    Raises:
        UsageError: unknown format or option, or an option that does not apply to the format.
        ManifestError: ``checkpoint`` is not a vhctl checkpoint.
        UnsupportedModelError: the format cannot hold this model (seq2seq in OpenRLHF...) or its bias.
        DestinationExistsError: ``out`` exists and ``force`` is False.
    """
    from vhctl.checkpoint.heads import check_head_state, read_safetensors_keys
    from vhctl.checkpoint.load import resolve_source
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.checkpoint.config import hidden_size_of, load_config
    from vhctl.io.files import atomic_output_dir

    if fmt not in km.EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", hint=f"use one of: {', '.join(km.EXPORT_FORMATS)}")
    if bias not in km.BIAS_MODES:
        raise UsageError(f"unknown --bias {bias!r}", hint=f"use one of: {', '.join(km.BIAS_MODES)}")
    if fmt == km.TRL and bias != km.BIAS_AUTO:
        raise UsageError("--bias does not apply to --format trl: TRL's value head has a bias of its own")
    if bias == km.BIAS_MEAN and fmt != km.OPENRLHF:
        raise UsageError("--bias mean needs --format openrlhf (only OpenRLHF normalises rewards with a mean)")
    if value_head_prefix is not None:
        if fmt != km.OPENRLHF:
            raise UsageError("--value-head-prefix applies to --format openrlhf only")
        if not value_head_prefix.isidentifier():
            raise UsageError(f"--value-head-prefix {value_head_prefix!r} must be a Python identifier (e.g. score)")
    if keep_shards and fmt != km.TRL:
        raise UsageError("--keep-shards applies to --format trl (other formats always keep the shards)")

    folder = resolve_source(checkpoint, revision=revision, token=token)
    manifest = Manifest.read(folder)
    out_path = Path(out).absolute()
    if out_path == folder.absolute() or folder.absolute() in out_path.parents:
        raise UsageError(f"--out {out_path} is inside the checkpoint {folder}", hint="choose a folder elsewhere")
    keymap = km.KEYMAPS[fmt]
    if manifest.architecture not in keymap.architectures:
        raise UnsupportedModelError(
            f"{checkpoint} is a {manifest.architecture} checkpoint; the {fmt} format holds "
            f"{' and '.join(keymap.architectures)} models only",
            hint="export seq2seq checkpoints with --format trl",
        )
    head_path = folder / VALUE_HEAD_NAME
    if not head_path.is_file():
        raise CheckpointError(f"{folder} has no {VALUE_HEAD_NAME}", hint="run 'vhctl validate' on it")
    _check_sizes(folder, manifest)
    head = read_safetensors_keys(head_path)
    peft_policy = (isinstance(manifest.extra, dict) and "peft_policy" in manifest.extra) or (
        (folder / ADAPTER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file()
    )
    result = ExportResult(out_path, fmt, str(checkpoint), manifest.architecture, manifest.model_type, "native")

    if peft_policy:
        if fmt != km.TRL:
            raise UnsupportedModelError(
                f"{checkpoint} is a PEFT policy (an adapter on {manifest.base_model.get('source')}); "
                f"the {fmt} format needs the full model",
                hint="merge the adapter (peft merge_and_unload), save, wrap that, then export",
            )
        check_head_state(head, int(head[V_HEAD_WEIGHT].shape[-1]), where=str(head_path))
        with atomic_output_dir(out_path, force=force) as tmp:
            result.files = _export_trl_peft(folder, tmp, head)
        result.notes.append(
            "TRL saves a PEFT policy's head as pytorch_model.bin (a pickle); vhctl writes it as "
            "model.safetensors, which TRL 1.12 reads first"
        )
        return result

    config = load_config(folder, where=str(checkpoint))
    hidden = hidden_size_of(config)
    check_head_state(head, hidden, where=str(head_path))
    weights = read_weight_set(folder)
    if manifest.kind == KIND_REFERENCE and manifest.reference and manifest.reference.shared_tensors:
        weights.add(_shared_from_policy(folder, manifest))
        if fmt == km.TRL:
            keep_shards = False

    with atomic_output_dir(out_path, force=force) as tmp:
        if fmt == km.TRL:
            result.files = _export_trl(folder, tmp, weights, head, keep_shards=keep_shards)
            if keep_shards and weights.sharded:
                result.notes.append(TRL_SHARDED_NOTE)
        else:
            _export_headless(folder, tmp, fmt, weights, head, config, manifest, hidden, bias,
                             value_head_prefix, result)
    return result


def _check_sizes(folder: Path, manifest: Any) -> None:
    """Refuse a checkpoint whose files no longer match their manifest sizes (a cheap integrity check;
    ``vhctl validate`` checks hashes)."""
    for rel, entry in manifest.files.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != entry.size:
            raise IntegrityError(
                f"{path} {'is missing' if not path.is_file() else 'changed size'} since the checkpoint was written",
                hint=f"run 'vhctl validate {folder}'",
            )


def _infos(weights: WeightSet) -> list[Any]:
    """Header info of the backbone tensors (dtype checks without reading data)."""
    from vhctl.checkpoint.tensors import read_header

    if weights.pickle:
        return []
    out = []
    for rel, _ in weights.groups:
        out.extend(read_header(weights.folder / rel).tensors.values())
    return out


def _shared_from_policy(folder: Path, manifest: Any) -> dict[str, torch.Tensor]:
    """A reference's shared tensors, from its policy, after the hash check loading does too."""
    from safetensors import safe_open

    from vhctl.checkpoint.tensors import shared_tensors_sha256, tensor_index

    ref = manifest.reference
    policy = (folder / str(ref.policy)).resolve()
    if not (policy / MANIFEST_NAME).is_file():
        raise CheckpointError(f"the policy of reference {folder} is not at {policy}")
    if shared_tensors_sha256(policy, ref.shared_tensors) != ref.shared_sha256:
        raise IntegrityError(
            f"the policy's shared tensors changed since reference {folder} was made",
            hint="make the reference again with 'vhctl make-ref'",
        )
    index = tensor_index(policy)
    out = {}
    for name in ref.shared_tensors:
        path, _ = index[name]
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out[name] = handle.get_tensor(name)
    return out


def _copy_side_files(src: Path, dst: Path, *, generation: bool = True) -> list[str]:
    from vhctl.checkpoint.save import copy_tokenizer_files

    files = copy_tokenizer_files(src, dst)
    if generation and (src / GENERATION_CONFIG_NAME).is_file():
        shutil.copyfile(src / GENERATION_CONFIG_NAME, dst / GENERATION_CONFIG_NAME)
        files.append(GENERATION_CONFIG_NAME)
    return files


def _copy_adapters(src: Path, dst: Path) -> list[str]:
    """Reward adapters stay next to the model (TRL takes them by path: ``reward_adapter=...``)."""
    if not (src / ADAPTERS_DIR).is_dir():
        return []
    shutil.copytree(src / ADAPTERS_DIR, dst / ADAPTERS_DIR)
    return sorted(p.relative_to(dst).as_posix() for p in (dst / ADAPTERS_DIR).rglob("*") if p.is_file())


def _trl_head(head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {V_HEAD_WEIGHT: head[V_HEAD_WEIGHT], V_HEAD_BIAS: head[V_HEAD_BIAS]}


def _export_trl(src: Path, dst: Path, weights: WeightSet, head: dict[str, torch.Tensor], *,
                keep_shards: bool) -> list[str]:
    """TRL's ``save_pretrained`` layout: the LM's tensors and ``v_head.summary.*`` in one file."""
    if keep_shards and weights.sharded:
        count = len(weights.groups)

        def groups() -> Any:
            for i in range(count):
                tensors = weights.group_tensors(i)
                if i == count - 1:
                    tensors.update(_trl_head(head))
                yield tensors

        files = write_weights(dst, groups(), count)
    else:
        merged: dict[str, torch.Tensor] = {}
        for i in range(len(weights.groups)):
            merged.update(weights.group_tensors(i))
        merged.update(_trl_head(head))
        files = write_weights(dst, [merged], 1)
    shutil.copyfile(src / CONFIG_NAME, dst / CONFIG_NAME)
    files.append(CONFIG_NAME)
    files += _copy_side_files(src, dst)
    files += _copy_adapters(src, dst)
    return sorted(files)


def _export_trl_peft(src: Path, dst: Path, head: dict[str, torch.Tensor]) -> list[str]:
    """A PEFT policy as TRL lays it out: the adapter, and the head alone next to it (as safetensors)."""
    files = []
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME):
        if not (src / name).is_file():
            raise CheckpointError(f"PEFT policy {src} lacks {name}", hint="run 'vhctl validate' on it")
        shutil.copyfile(src / name, dst / name)
        files.append(name)
    files += write_weights(dst, [_trl_head(head)], 1)
    files += _copy_side_files(src, dst, generation=False)
    files += _copy_adapters(src, dst)
    return sorted(files)


def _bias_plan(mode: str, fmt: str, bias: float, model_type: str, keys: list[str], checkpoint: str) -> tuple[str, str | None]:
    """How to keep a head bias the format's head cannot hold: (mode, norm bias key)."""
    if bias == 0.0:
        return "zero", None
    norm_key = foldable_key(model_type, keys)
    if mode in (km.BIAS_AUTO, km.BIAS_NORM) and norm_key is not None:
        return km.BIAS_NORM, norm_key
    if mode in (km.BIAS_MEAN, km.BIAS_CONFIG):
        return mode, None
    options = "--bias mean (exact normalised rewards: OpenRLHF run with normalize_reward) or " if fmt == km.OPENRLHF else ""
    raise UnsupportedModelError(
        f"the value head of {checkpoint} has bias {bias}, which the {fmt} format cannot hold exactly for a "
        f"{model_type} model: its head has no bias"
        f"{' and its final norm none to fold it into' if norm_key is None else ''}",
        hint=f"pass {options}--bias config (kept in config.json; the model's raw scores are value - bias)",
    )


def _export_headless(src: Path, dst: Path, fmt: str, weights: WeightSet, head: dict[str, torch.Tensor],
                     config: Any, manifest: Any, hidden: int, mode: str, value_head_prefix: str | None,
                     result: ExportResult) -> None:
    """OpenRLHF and seqcls: the backbone under ``base_model_prefix``, the head as one bias-free Linear."""
    from vhctl.formats._model import base_prefix, check_seqcls_score

    where = result.source
    model_type = str(config.model_type)
    base = base_prefix(config, where=where)
    weight = head[V_HEAD_WEIGHT]
    bias = float(head[V_HEAD_BIAS].reshape(-1)[0])
    imported = manifest.extra.get(IMPORTED_KEY) if isinstance(manifest.extra, dict) else None
    restored: dict[str, Any] = {}
    if isinstance(imported, dict) and imported.get("format") == fmt and isinstance(imported.get("config"), dict):
        restored = dict(imported["config"])

    if fmt == km.SEQCLS:
        cls_name = check_seqcls_score(config, hidden, where=where)
    else:
        cls_name = ""
        if getattr(config, "hidden_size", None) != hidden:
            raise UnsupportedModelError(
                f"{where}: OpenRLHF sizes its head by config.hidden_size ({getattr(config, 'hidden_size', None)}), "
                f"but this model's last hidden state has {hidden} features",
                hint="export it with --format trl or --format seqcls",
            )
        from transformers import AutoModel

        if type(config) not in AutoModel._model_mapping:
            raise UnsupportedModelError(f"{where}: transformers has no AutoModel class for {model_type}")
        imported_key = imported.get("head_key") if isinstance(imported, dict) and restored else None
        imported_prefix = imported_key.removesuffix(".weight") if isinstance(imported_key, str) else None
        value_head_prefix = (
            value_head_prefix or restored.get("value_head_prefix") or imported_prefix or km.OPENRLHF_DEFAULT_PREFIX
        )
    head_key = km.head_weight_key(fmt, value_head_prefix=value_head_prefix or km.OPENRLHF_DEFAULT_PREFIX)

    plan: list[list[tuple[str, str]]] = []
    dropped: list[str] = []
    for _, keys in weights.groups:
        pairs = []
        for key in keys:
            mapped = km.vhctl_key_to_backbone(fmt, key, base)
            if mapped is None:
                dropped.append(key)
            else:
                pairs.append((key, mapped))
        plan.append(pairs)
    kept = [mapped for pairs in plan for _, mapped in pairs]
    if head_key in kept:
        raise UnsupportedModelError(f"{where}: the backbone already has a tensor named {head_key}")
    bias_mode, norm_key = _bias_plan(mode, fmt, bias, model_type, kept, where)
    result.bias, result.norm_bias_key = bias_mode, norm_key

    groups = [(i, pairs) for i, pairs in enumerate(plan) if pairs]
    head_group = len(groups) - 1
    if norm_key is not None:
        head_group = next(n for n, (_, pairs) in enumerate(groups) if any(m == norm_key for _, m in pairs))

    def tensors() -> Any:
        for n, (index, pairs) in enumerate(groups):
            src_tensors = weights.group_tensors(index)
            out = {}
            for key, mapped in pairs:
                tensor = src_tensors[key]
                if mapped == norm_key:
                    tensor = fold(tensor, weight, bias, key=norm_key)
                out[mapped] = tensor
            if n == head_group:
                out[head_key] = weight
            yield out

    files = write_weights(dst, tensors(), len(groups))

    normalization = normalization_of(manifest)
    cfg = json.loads((src / CONFIG_NAME).read_text(encoding="utf-8"))
    record: dict[str, Any] = {
        "vhctl_version": __version__,
        "value_head_bias": bias,
        "bias": bias_mode,
        "head_sha256": head_fingerprint(weight),
        "architectures": cfg.get("architectures"),
        NORMALIZATION_KEY: {"mean": normalization[0], "std": normalization[1]} if normalization else None,
    }
    if norm_key is not None:
        record["norm_bias_key"] = norm_key
    for name in ("architectures", *km.SEQCLS_CONFIG_FIELDS, *km.OPENRLHF_CONFIG_FIELDS):
        if name in restored and restored[name] is not None:
            cfg[name] = restored[name]
    if fmt == km.SEQCLS:
        cfg["architectures"] = [cls_name]
        cfg["id2label"] = {"0": "LABEL_0"} if not isinstance(restored.get("id2label"), dict) else restored["id2label"]
        cfg["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
        if len(cfg["id2label"]) != 1:
            raise CheckpointError(f"{where}: the recorded id2label has {len(cfg['id2label'])} labels, not 1")
        cfg.pop("num_labels", None)
    else:
        if not (isinstance(cfg.get("architectures"), list) and
                any(a in km.OPENRLHF_ARCHITECTURES for a in cfg["architectures"])):
            cfg["architectures"] = [km.OPENRLHF_DEFAULT_ARCHITECTURE]
        cfg["value_head_prefix"] = value_head_prefix
        cfg.setdefault("normalize_reward", False)
        if normalization is not None:
            cfg["mean"], cfg["std"] = normalization
        if bias_mode == km.BIAS_MEAN:
            mean, std = normalization if normalization is not None else (0.0, 1.0)
            # OpenRLHF returns (r - mean) / std with r = w . h = value - bias: shift the mean by the bias.
            cfg["mean"], cfg["std"], cfg["normalize_reward"] = mean - bias, std, True
    cfg[km.VHCTL_EXPORT_FIELD] = record
    write_json(dst / CONFIG_NAME, cfg)
    files.append(CONFIG_NAME)
    files += _copy_side_files(src, dst, generation=False)
    result.files = sorted(files)

    if dropped:
        result.notes.append(
            f"the {fmt} format has no LM head: {', '.join(dropped)} left out (the value head and backbone are exact)"
        )
    if bias_mode == km.BIAS_NORM:
        result.notes.append(f"head bias {bias} folded into {norm_key}: raw {fmt} scores equal vhctl values")
    elif bias_mode == km.BIAS_MEAN:
        result.notes.append(
            f"head bias {bias} folded into the reward mean (normalize_reward=true): OpenRLHF's normalised "
            "rewards equal vhctl's (normalised) values; its raw rewards are value - bias"
        )
    elif bias_mode == km.BIAS_CONFIG:
        result.notes.append(
            f"head bias {bias} kept in config.json only: raw {fmt} scores are value - {bias}; vhctl re-imports it exactly"
        )
    if fmt == km.SEQCLS:
        result.notes.append(
            "transformers pools at the last token that is not pad_token_id; vhctl's value is at the last "
            "attention-mask token (they differ only when a text ends with the pad token)"
        )
        if cfg.get("pad_token_id") is None:
            result.notes.append(
                "config.json has no pad_token_id: transformers' classifier then scores one text per batch "
                "(set pad_token_id, e.g. to the eos id, to batch)"
            )
    floats = {t.dtype_name for t in _infos(weights) if t.is_float}
    if len(floats) == 1 and (dtype := floats.pop()) != str(weight.dtype).removeprefix("torch."):
        result.notes.append(
            f"the head is stored as {str(weight.dtype).removeprefix('torch.')} next to a {dtype} backbone; "
            f"loading the model in {dtype} rounds it"
        )


__all__ = ["ExportResult", "TRL_SHARDED_NOTE", "export_checkpoint"]
