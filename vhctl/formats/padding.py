"""The pad token of a ``*ForSequenceClassification`` export, so it reads the token vhctl scores.

transformers' classifier reads its score at the rightmost token that is not ``pad_token_id``, and
TRL's reward-model path pads with the EOS token when the tokenizer has no pad token (and copies the
tokenizer's pad id into the model's config). With pad = EOS, a text that ends in EOS is scored at
the token before its trailing EOS tokens; vhctl scores the last token. The export therefore gets a
pad token of its own where the tokenizer allows it without touching the embedding matrix: a special
token meant for padding, the unknown token, or a new token on a spare embedding row (vocab_size
larger than the tokenizer). Otherwise it is refused, unless the user keeps EOS (``--pad-token eos``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhctl.errors import CheckpointError, UnsupportedModelError

__all__ = ["NEW_PAD_TOKEN", "PAD_AUTO", "PAD_EOS", "PAD_MODES", "PadPlan", "apply_pad", "plan_pad"]

PAD_AUTO = "auto"
PAD_EOS = "eos"
PAD_MODES = (PAD_AUTO, PAD_EOS)
NEW_PAD_TOKEN = "<|pad|>"


@dataclass
class PadPlan:
    """The pad token the export gets: its id (None: no pad), its text, and whether it is a new token."""

    pad_id: int | None
    token: str | None
    new: bool
    changed: bool
    note: str | None


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError):
        return None


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()


def _spare_pad(tokenizer: Any, vocab: int | None, taken: set[int]) -> tuple[int, str, bool] | None:
    """A token the tokenizer never makes from ordinary text, on a row of the embedding matrix."""
    limit = vocab if vocab is not None else len(tokenizer)
    specials = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for token_id, added in sorted(specials.items()):
        if added.special and "pad" in added.content.lower() and token_id not in taken and token_id < limit:
            return token_id, added.content, False
    unk = tokenizer.unk_token_id
    if unk is not None and unk not in taken and unk < limit and tokenizer.unk_token is not None:
        return unk, tokenizer.unk_token, False
    if vocab is not None and len(tokenizer) < vocab and NEW_PAD_TOKEN not in tokenizer.get_vocab():
        return len(tokenizer), NEW_PAD_TOKEN, True
    return None


def _eos_note(pad: int, eos_text: str) -> str:
    return (
        f"the pad token is the EOS token ({eos_text}, id {pad}): transformers (and TRL's reward-model path) "
        "read the score at the last token that is not the pad token, so a text that ends in EOS is scored at "
        "the token before its trailing EOS tokens, where vhctl scores the last token"
    )


def plan_pad(src: Path, config: Any, mode: str, *, where: str) -> PadPlan:
    """Choose the export's pad token (see the module docstring) from the checkpoint's tokenizer and config.

    Raises:
        UnsupportedModelError: pad = EOS, ``mode`` is ``auto`` and no token can pad instead.
    """
    tokenizer = _load_tokenizer(src)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    eos = _ids(getattr(text_config, "eos_token_id", None))
    config_pad = getattr(text_config, "pad_token_id", None)
    vocab = getattr(text_config, "vocab_size", None)
    vocab = vocab if isinstance(vocab, int) else None
    if tokenizer is None:
        if config_pad is None or config_pad not in eos:
            return PadPlan(config_pad, None, False, False, None)
        eos_text = f"id {config_pad}"
        spare = None
    else:
        eos |= _ids(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None or pad not in eos:
            return PadPlan(pad, tokenizer.pad_token, False, False, None)
        config_pad, eos_text = pad, repr(tokenizer.convert_ids_to_tokens(pad))
        spare = _spare_pad(tokenizer, vocab, eos | _ids(tokenizer.bos_token_id))
    if mode == PAD_EOS:
        return PadPlan(config_pad, None, False, False, _eos_note(config_pad, eos_text))
    if spare is None:
        raise UnsupportedModelError(
            f"{where} pads with its EOS token ({eos_text}, id {config_pad}) and its tokenizer has no other token "
            "to pad with (no pad or unknown token, no spare embedding row): transformers and TRL's reward-model "
            "path would score a text that ends in EOS at the token before its trailing EOS tokens, where vhctl "
            "scores the EOS",
            hint="pass --pad-token eos to export anyway (right when the texts scored never end in EOS), or give "
            "the model a pad token (tokenizer.add_special_tokens, model.resize_token_embeddings) and wrap it again",
        )
    pad_id, token, new = spare
    kind = "a new token on a spare embedding row" if new else "a special token of the tokenizer"
    note = (
        f"pad token {token!r} (id {pad_id}, {kind}) instead of the EOS token: transformers and TRL read the "
        "score at the last token, as vhctl does, also after a trailing EOS"
    )
    return PadPlan(pad_id, token, new, True, note)


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def apply_pad(plan: PadPlan, dst: Path) -> None:
    """Write the plan's pad token into the tokenizer files copied to ``dst``, then check it loads so."""
    if not plan.changed or plan.token is None or plan.pad_id is None:
        return
    entry = {"id": plan.pad_id, "content": plan.token, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}  # fmt: skip
    config_path = dst / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    config["pad_token"] = plan.token
    if plan.new:
        fast = dst / "tokenizer.json"
        if not fast.is_file():
            raise UnsupportedModelError(f"{dst}: a new pad token needs a tokenizer.json (a fast tokenizer)")
        data = _read_json(fast)
        data.setdefault("added_tokens", []).append(entry)
        _write_json(fast, data)
        if isinstance(config.get("added_tokens_decoder"), dict):
            config["added_tokens_decoder"][str(plan.pad_id)] = {k: v for k, v in entry.items() if k != "id"}
    _write_json(config_path, config)
    special_map = dst / "special_tokens_map.json"
    if special_map.is_file():
        data = _read_json(special_map)
        data["pad_token"] = plan.token
        _write_json(special_map, data)
    tokenizer = _load_tokenizer(dst)
    if tokenizer is None or tokenizer.pad_token_id != plan.pad_id:
        got = None if tokenizer is None else tokenizer.pad_token_id
        raise CheckpointError(
            f"{dst}: the exported tokenizer pads with id {got}, not {plan.pad_id} as written"
        )
