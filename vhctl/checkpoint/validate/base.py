"""The base weights against the model ``config.json`` describes: tensor set, shapes and dtypes.

File keys are mapped to model keys with transformers' own load-time renames, tied weights may be
stored once, and a reference's shared tensors are looked up in its policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from vhctl.checkpoint.tensors import TensorInfo, read_index
from vhctl.checkpoint.validate.adapters import check_adapter_tensors
from vhctl.checkpoint.validate.problems import fmt_shape
from vhctl.checkpoint.validate.state import CheckState, ModelFacts
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_PREFIX,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError

__all__ = ["check_base"]

# (code, file) -> messages, summarised per file once every tensor has been looked at
_Notes = dict[tuple[str, str], list[str]]
_Note = Callable[[str, str, str], None]


def check_base(state: CheckState) -> None:
    """Every base tensor the model needs is stored once, with the shape and dtype config.json implies."""
    m = state.manifest
    if (
        state.is_peft_policy()
        and not (state.root / SAFE_WEIGHTS_NAME).is_file()
        and not (state.root / SAFE_WEIGHTS_INDEX_NAME).is_file()
    ):
        _check_peft_policy(state)
        return
    own, found = _base_tensors(state)
    is_ref = m is not None and m.kind == KIND_REFERENCE and m.reference is not None
    shared = set(m.reference.shared_tensors) if is_ref and m is not None and m.reference else set()
    if not found and not shared and SAFE_WEIGHTS_NAME not in state.reported_missing:
        pickled = [n for n in (PT_WEIGHTS_NAME, PT_WEIGHTS_INDEX_NAME) if (state.root / n).exists()]
        extra = f" (only {pickled[0]}, a pickle, is there)" if pickled else ""
        state.add(
            "weights-missing",
            None,
            f"no {SAFE_WEIGHTS_NAME} or sharded safetensors holds the base "
            f"model{extra}; re-create the checkpoint with 'vhctl wrap'",
        )
        return
    if shared:
        overlap = sorted(set(own) & shared)
        state.add_many(
            "reference-tensors",
            own[overlap[0]][0] if overlap else None,
            [f"holds {n!r}, which the reference shares with its policy" for n in overlap],
            "shared tensors are stored in the reference",
        )
    if state.model is not None:
        _compare_with_model(state, state.model, own, shared)


def _base_tensors(state: CheckState) -> tuple[dict[str, tuple[str, TensorInfo]], bool]:
    """Base tensors name -> (relpath, info); the bool says whether a weight file was found."""
    out: dict[str, tuple[str, TensorInfo]] = {}
    if (state.root / SAFE_WEIGHTS_INDEX_NAME).is_file():
        _sharded_tensors(state, out)
        return out, True
    if (state.root / SAFE_WEIGHTS_NAME).is_file():
        header = state.headers.get(SAFE_WEIGHTS_NAME)
        if header is not None:
            out = {name: (SAFE_WEIGHTS_NAME, info) for name, info in header.tensors.items()}
        return out, True
    return out, False


def _sharded_tensors(state: CheckState, out: dict[str, tuple[str, TensorInfo]]) -> None:
    """Fill ``out`` from the shards the index names, reporting shards and entries that disagree."""
    try:
        weight_map = read_index(state.root)
    except CheckpointError as exc:
        state.add("index-invalid", SAFE_WEIGHTS_INDEX_NAME, str(exc))
        return
    bad: list[str] = []
    for shard in sorted(set(weight_map.values())):
        if state.is_outside(shard):
            continue
        if not (state.root / shard).is_file():
            if shard not in state.reported_missing:
                state.reported_missing.add(shard)
                state.add(
                    "file-missing", shard, f"is named by {SAFE_WEIGHTS_INDEX_NAME} but not in the folder"
                )
            continue
        header = state.headers.get(shard)
        if header is None:
            continue
        for name, info in header.tensors.items():
            out[name] = (shard, info)
            if weight_map.get(name) != shard:
                bad.append(f"{shard} holds {name!r}, which the index does not map to it")
    for name, shard in weight_map.items():
        header = state.headers.get(shard)
        if header is not None and name not in header.tensors:
            bad.append(f"the index puts {name!r} in {shard}, which does not hold it")
    state.add_many("index-invalid", SAFE_WEIGHTS_INDEX_NAME, bad, "index entries are wrong")


def _check_peft_policy(state: CheckState) -> None:
    """A PEFT policy stores its policy adapter at the root instead of base weights."""
    missing = [n for n in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME) if not (state.root / n).is_file()]
    for name in missing:
        state.add("adapter-missing", name, f"this PEFT policy has no {name}")
    config: dict[str, Any] = {}
    if ADAPTER_CONFIG_NAME not in missing:
        try:
            loaded = json.loads((state.root / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            state.add(
                "adapter-invalid", ADAPTER_CONFIG_NAME, f"cannot read the policy adapter's config: {exc}"
            )
    header = state.headers.get(ADAPTER_SAFE_NAME)
    if header is not None:
        check_adapter_tensors(state, "policy", ADAPTER_SAFE_NAME, header, config, "policy")


def _compare_with_model(
    state: CheckState, facts: ModelFacts, own: dict[str, tuple[str, TensorInfo]], shared: set[str]
) -> None:
    """Stored tensors (own, or shared through the policy) against the model's, then what is missing."""
    m = state.manifest
    cfg = state.config_dict or {}
    check_float = "dtype" in cfg or "torch_dtype" in cfg
    by_file: _Notes = {}

    def note(code: str, rel: str, msg: str) -> None:
        by_file.setdefault((code, rel), []).append(msg)

    # File keys -> model keys, as transformers renames them on load (legacy names, prefixes, fused experts).
    covered: set[str] = set()
    strays: list[str] = []
    for name in sorted(set(own) | shared):
        model_key, converted = _map_key(facts, name)
        if model_key not in facts.expected:
            if name in own:
                _note_unexpected(facts, name, own[name][0], note)
            else:
                strays.append(f"reference.shared_tensors names {name!r}, which the model does not have")
            continue
        covered.add(model_key)
        if name in own:
            rel, info = own[name]
        elif state.policy_index is not None and name in state.policy_index and m is not None and m.reference:
            rel, info = (
                f"{m.reference.policy}/{state.policy_index[name][0].name}",
                state.policy_index[name][1],
            )
        else:
            continue
        _compare(facts, name, model_key, converted, rel, info, note, check_float)
    state.add_many("reference-tensors", MANIFEST_NAME, strays, "shared tensor names are unknown to the model")
    state.add_many("missing-tensor", None, _missing(facts, covered), "tensors are missing")
    for (code, rel), msgs in by_file.items():
        what = (
            "tensors differ from config.json"
            if code != "unexpected-tensor"
            else "tensors are not part of the model"
        )
        state.add_many(code, rel, msgs, what)


def _note_unexpected(facts: ModelFacts, name: str, rel: str, note: _Note) -> None:
    if name.startswith(V_HEAD_PREFIX) or f".{V_HEAD_PREFIX}" in name:
        note(
            "unexpected-tensor",
            rel,
            f"holds {name!r}: the value head belongs in "
            f"{VALUE_HEAD_NAME}, not in the base weights (TRL layout; re-wrap with 'vhctl wrap')",
        )
    elif not _ignored(name, facts.ignore_unexpected):
        note("unexpected-tensor", rel, f"holds {name!r}, which the model does not have")


def _missing(facts: ModelFacts, covered: set[str]) -> list[str]:
    """The model's tensors no weight file holds (a tied group is covered by any of its names)."""
    missing: list[str] = []
    for group in facts.tied_groups:
        if any(n in covered for n in group):
            continue
        if all(_ignored(n, facts.ignore_missing) for n in group):
            continue
        aliases = f" (tied with {', '.join(group[1:])})" if len(group) > 1 else ""
        missing.append(f"{group[0]!r}{aliases} is in no weight file")
    return missing


def _map_key(facts: ModelFacts, name: str) -> tuple[str, bool]:
    """The model key transformers loads file key ``name`` into, and whether a converter (which
    reshapes, e.g. fuses MoE experts) is involved."""
    if facts.key_mapper is None:
        return name, False
    try:
        return facts.key_mapper(name)
    except Exception:  # transformers internals: fall back to the plain name
        return name, False


def _compare(
    facts: ModelFacts,
    name: str,
    model_key: str,
    converted: bool,
    rel: str,
    info: TensorInfo,
    note: _Note,
    check_float: bool,
) -> None:
    shape, dtype = facts.expected[model_key]
    if not converted and info.shape != shape:
        note(
            "shape-mismatch",
            rel,
            f"{name!r} has shape {fmt_shape(info.shape)}, config.json implies {fmt_shape(shape)}",
        )
    actual = info.dtype_name
    if actual == dtype:
        return
    expected_float = dtype.startswith(("float", "bfloat"))
    if expected_float and info.is_float:
        if not check_float:
            return
        if actual == "float32" and any(
            re.search(rf"(^|\.){re.escape(p)}(\.|$)", model_key) for p in facts.keep_fp32
        ):
            return
    note("dtype-mismatch", rel, f"{name!r} is {actual}, config.json implies {dtype}")


def _ignored(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        try:
            if re.search(pattern, name):
                return True
        except re.error:
            if pattern in name:
                return True
    return False
