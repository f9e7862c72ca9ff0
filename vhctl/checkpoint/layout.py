"""What a folder is, told from its file names alone (nothing is opened, nothing heavy imported)."""

from __future__ import annotations

from pathlib import Path

from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    VALUE_HEAD_NAME,
)

__all__ = ["is_peft_policy_source"]

# Where a PEFT policy folder (vhctl's or TRL's) keeps its value head next to the adapter.
_HEAD_FILES = (
    VALUE_HEAD_NAME,
    SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    PT_WEIGHTS_INDEX_NAME,
)


def is_peft_policy_source(folder: Path) -> bool:
    """An adapter folder without a model config that keeps a value head next to the adapter.

    Only file names are looked at (a pickle is not opened here), so a TRL folder is recognised
    with or without ``--allow-pickle`` and then meets the usual pickle refusal.
    """
    if not (folder / ADAPTER_CONFIG_NAME).is_file() or (folder / CONFIG_NAME).is_file():
        return False
    return any((folder / name).is_file() for name in _HEAD_FILES)
