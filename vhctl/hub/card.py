"""The model card (``README.md``) of a checkpoint: huggingface_hub's ``ModelCard`` over vhctl's template.

The Markdown lives in ``templates/model_card.md`` (Jinja); the metadata block is a
``ModelCardData``, so the hub's metadata rules apply. The text depends only on the checkpoint
(and the repo id), so pushing an unchanged checkpoint uploads an identical card and makes no commit.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ARCH_SEQ2SEQ,
    CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    TOKENIZER_FILES,
)
from vhctl.io.hub import is_repo_id

__all__ = ["CARD_MARKER", "CARD_TAGS", "card_for_push", "format_size", "model_card"]

CARD_MARKER = "<!-- vhctl:model-card -->"
CARD_TAGS = ("vhctl", "value-head", "rlhf")
TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
# Config fields worth a line on the card, in this order, when the config has them.
CONFIG_FACTS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "hidden_size",
    "n_embd",
    "d_model",
    "vocab_size",
)


def model_card(folder: str | os.PathLike[str], *, repo_id: str | None = None) -> str:
    """The model card (``README.md``) for a checkpoint, from its manifest and config.

    Args:
        folder: the checkpoint.
        repo_id: the hub id used in the usage examples (default: the folder name).

    Returns:
        The card's text: YAML metadata, then the Markdown body.
    """
    from huggingface_hub import ModelCard, ModelCardData

    root = Path(folder)
    manifest = Manifest.read(root)
    data = ModelCardData(
        library_name="vhctl", base_model=base_repo(manifest, repo_id), tags=card_tags(manifest)
    )
    text = _template().render(card_data=data.to_yaml(), **_card_context(root, manifest, repo_id))
    return str(ModelCard(text))


def card_for_push(root: Path, repo_id: str) -> str:
    """The card to upload: ours, or the user's own README.md with our metadata merged in."""
    from huggingface_hub import ModelCard

    path = root / MODEL_CARD_NAME
    try:
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        existing = None
    if existing is None or CARD_MARKER in existing:
        return model_card(root, repo_id=repo_id)
    manifest = Manifest.read(root)
    card = ModelCard(existing, ignore_metadata_errors=True)
    data: Any = card.data  # a ModelCardData (its fields are set from the card's YAML)
    data["library_name"] = "vhctl"  # CardData sets the attribute
    tags = list(data.tags or [])
    data.tags = tags + [t for t in card_tags(manifest) if t not in tags]
    base = base_repo(manifest, repo_id)
    if base and not data.base_model:
        data.base_model = base
    return str(card)


def base_repo(manifest: Manifest, repo_id: str | None) -> str | None:
    """The base model's hub id when the manifest records one (not a local path or the tiny model)."""
    source = manifest.base_model.get("source") if isinstance(manifest.base_model, dict) else None
    if not isinstance(source, str) or not is_repo_id(source) or source == repo_id:
        return None
    return source


def card_tags(manifest: Manifest) -> list[str]:
    """The hub tags of a checkpoint: vhctl's, its architecture and model type, what it holds."""
    tags = [*CARD_TAGS, manifest.architecture]
    if manifest.model_type:
        tags.append(manifest.model_type)
    if manifest.kind == KIND_REFERENCE:
        tags.append("reference-model")
    if any(a.role == "reward" for a in manifest.adapters.values()):
        tags.append("reward-model")
    if manifest.adapters:
        tags.append("peft")
    return list(dict.fromkeys(tags))


def format_size(n: float) -> str:
    """Bytes as a short human-readable size (decimal units, as the Hub shows them)."""
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n /= 1000
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


@cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False
    )
    return env.from_string(TEMPLATE.read_text(encoding="utf-8"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _card_context(root: Path, manifest: Manifest, repo_id: str | None) -> dict[str, Any]:
    """What the template needs, worked out from the manifest and config.json."""
    config = _read_json(root / CONFIG_NAME)
    seq2seq = manifest.architecture == ARCH_SEQ2SEQ
    base = manifest.base_model if isinstance(manifest.base_model, dict) else {}
    ref = manifest.reference
    reference = manifest.kind == KIND_REFERENCE
    shared = ref.num_shared_layers if ref else 0
    return {
        "name": repo_id or root.resolve().name,
        "reference": reference,
        "shared_layers": shared,
        "policy": ref.policy if ref else "?",
        "model_type": manifest.model_type,
        "architecture": manifest.architecture,
        "kind": manifest.kind,
        "head": manifest.value_head,
        "vh_class": "AutoModelForSeq2SeqLMWithValueHead" if seq2seq else "AutoModelForCausalLMWithValueHead",
        "auto_class": "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
        "lm_kind": "Seq2SeqLM" if seq2seq else "CausalLM",
        "standalone": not reference or not shared,
        "peft_policy": (root / ADAPTER_CONFIG_NAME).is_file() and not (root / CONFIG_NAME).is_file(),
        "has_tokenizer": any((root / f).is_file() for f in TOKENIZER_FILES),
        "source": base.get("source"),
        "revision": base.get("revision"),
        "config_facts": [(key, config[key]) for key in CONFIG_FACTS if key in config],
        "frozen": manifest.frozen,
        "references": manifest.references,
        "adapters": sorted(manifest.adapters.items()),
        "manifest_name": MANIFEST_NAME,
        "file_count": len(manifest.files),
        "total_size": format_size(sum(entry.size for entry in manifest.files.values())),
        "vhctl_version": manifest.vhctl_version,
        "format_name": manifest.format,
        "format_version": manifest.format_version,
    }
