"""PEFT adapters: each listed adapter's files are there and its matrices fit the base model.

LoRA ``A``/``B`` matrices must target modules the base model has, with its input and output sizes;
a reward adapter needs a ``score`` head of width ``hidden``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from vhctl.checkpoint.manifest import AdapterInfo
from vhctl.checkpoint.tensors import SafetensorsHeader, TensorInfo
from vhctl.checkpoint.validate.problems import fmt_shape
from vhctl.checkpoint.validate.state import CheckState, ModuleShape
from vhctl.constants import ADAPTER_CONFIG_NAME, ADAPTER_PT_NAME, ADAPTER_SAFE_NAME, MANIFEST_NAME
from vhctl.io.files import safe_relpath

__all__ = ["check_adapter_tensors", "check_adapters"]

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


def check_adapters(state: CheckState) -> None:
    """Every adapter the manifest lists: files, config, base model name, hidden size, tensors."""
    if state.manifest is None:
        return
    base_model = state.manifest.base_model
    source = base_model.get("source") if isinstance(base_model, dict) else None
    for name, info in sorted(state.manifest.adapters.items()):
        rel_dir = safe_relpath(info.path)
        if state.is_outside(rel_dir):
            continue
        if not (state.root / rel_dir).is_dir():
            state.add("adapter-missing", rel_dir, f"adapter {name!r}: the folder is not there")
            continue
        _check_one(state, name, info, rel_dir, source)


def _check_one(state: CheckState, name: str, info: AdapterInfo, rel_dir: str, source: Any) -> None:
    folder = state.root / rel_dir
    cfg_rel, st_rel = f"{rel_dir}/{ADAPTER_CONFIG_NAME}", f"{rel_dir}/{ADAPTER_SAFE_NAME}"
    if not (state.root / cfg_rel).is_file():
        state.add("adapter-missing", cfg_rel, f"adapter {name!r} has no {ADAPTER_CONFIG_NAME}")
    if not (state.root / st_rel).is_file():
        pickled = (folder / ADAPTER_PT_NAME).exists()
        state.add(
            "adapter-missing",
            st_rel,
            f"adapter {name!r} has no {ADAPTER_SAFE_NAME}"
            + (f" (only {ADAPTER_PT_NAME}, a pickle)" if pickled else ""),
        )
    config: dict[str, Any] = {}
    if (state.root / cfg_rel).is_file():
        try:
            loaded = json.loads((state.root / cfg_rel).read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            config = loaded
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            state.add("adapter-invalid", cfg_rel, f"adapter {name!r}: cannot read its config: {exc}")
    base_name = config.get("base_model_name_or_path") or info.base_model
    if base_name and source and str(base_name).rstrip("/") != str(source).rstrip("/"):
        state.add(
            "adapter-base-name",
            cfg_rel,
            f"adapter {name!r} was made for {base_name!r}, the "
            f"checkpoint's base is {source!r} (fine if it is the same model)",
        )
    if isinstance(info.hidden_size, int) and state.hidden is not None and info.hidden_size != state.hidden:
        state.add(
            "adapter-base-mismatch",
            MANIFEST_NAME,
            f"adapter {name!r} is recorded with hidden size {info.hidden_size}, the model's is {state.hidden}",
        )
    header = state.headers.get(st_rel)
    if header is not None:
        check_adapter_tensors(state, name, st_rel, header, config, info.role)


def check_adapter_tensors(
    state: CheckState,
    name: str,
    rel: str,
    header: SafetensorsHeader,
    config: dict[str, Any],
    role: str | None,
) -> None:
    """An adapter's tensors against the base model: score head width, LoRA targets and sizes.

    Args:
        state: the validation state (``hidden`` and ``model`` from the config check).
        name: the adapter's name in messages (``policy`` for a PEFT policy's own adapter).
        rel: the adapter's safetensors file, relative to the checkpoint.
        header: that file's parsed header.
        config: its ``adapter_config.json`` (empty when unreadable).
        role: ``reward`` needs a score head.
    """
    problems: list[str] = []
    scores = [
        t for t in header.tensors.values() if "score" in t.name.split(".") and t.name.endswith("weight")
    ]
    if role == "reward" and not scores:
        state.add(
            "adapter-invalid",
            rel,
            f"reward adapter {name!r} has no 'score' head (save it from a "
            "SEQ_CLS PEFT model so that modules_to_save holds the score layer)",
        )
    for t in scores:
        if state.hidden is not None and (len(t.shape) != 2 or t.shape[1] != state.hidden):
            problems.append(
                f"{t.name} is {fmt_shape(t.shape)}, the model needs (num_labels, {state.hidden}): "
                "made for a model of another hidden size"
            )
    modules = state.model.modules if state.model is not None else {}
    if modules:
        unknown, lora = _lora_problems(header.tensors.values(), modules, config.get("target_modules"))
        problems = ([unknown] if unknown else []) + problems + lora
    if problems:
        state.add_many(
            "adapter-base-mismatch",
            rel,
            [f"adapter {name!r}: {p}" for p in problems],
            f"mismatches in adapter {name!r}",
        )


def _lora_problems(
    tensors: Iterable[TensorInfo], modules: dict[str, ModuleShape], targets: Any
) -> tuple[str | None, list[str]]:
    """LoRA matrices that do not fit the base: (one line for unknown modules, one per size problem)."""
    problems: list[str] = []
    unknown: list[str] = []
    lora_seen = False
    for t in tensors:
        match = _LORA_KEY.match(t.name)
        if match is None or len(t.shape) != 2:
            continue
        lora_seen = True
        path, part = match.groups()
        module = _find_module(modules, path)
        if module is None:
            unknown.append(path)
            continue
        problem = _size_problem(t, part, path, module)
        if problem:
            problems.append(problem)
    first = None
    if unknown:
        names = sorted(set(unknown))
        first = (
            f"targets module(s) the base model does not have ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}): made for another architecture"
        )
    if not lora_seen and not _targets_match(modules, targets):
        problems.append(f"target_modules {targets!r} match no module of the base model")
    return first, problems


def _size_problem(t: TensorInfo, part: str, path: str, module: ModuleShape) -> str | None:
    shape = fmt_shape(t.shape)
    if part == "lora_A" and t.shape[1] != module.n_in:
        return f"{t.name} is {shape}: {path} takes {module.n_in} inputs"
    if part == "lora_B" and t.shape[0] != module.n_out:
        return f"{t.name} is {shape}: {path} has {module.n_out} outputs"
    if part == "lora_embedding_A" and t.shape[1] != module.n_in:
        return f"{t.name} is {shape}: {path} has {module.n_in} embeddings"
    if part == "lora_embedding_B" and t.shape[0] != module.n_out:
        return f"{t.name} is {shape}: {path} has width {module.n_out}"
    return None


def _find_module(modules: dict[str, ModuleShape], path: str) -> ModuleShape | None:
    if path in modules:
        return modules[path]
    # Sequence-classification bases may name their trunk differently (T5: transformer.encoder...).
    tail = path.split(".", 1)[1] if "." in path else None
    if tail:
        for name, module in modules.items():
            if name == tail or name.endswith("." + tail):
                return module
    return None


def _targets_match(modules: dict[str, ModuleShape], targets: Any) -> bool:
    if not targets or targets == "all-linear":
        return True
    names = list(modules)
    if isinstance(targets, str):
        try:
            return any(re.fullmatch(targets, n) for n in names)
        except re.error:
            return True
    if isinstance(targets, list):
        return any(n == t or n.endswith(f".{t}") for n in names for t in targets if isinstance(t, str))
    return True
