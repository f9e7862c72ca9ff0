"""Tokenizer files travel with a checkpoint: ``score`` needs a tokenizer next to the model."""

from __future__ import annotations

import shutil
from pathlib import Path

from vhctl.constants import TOKENIZER_FILES

__all__ = ["copy_tokenizer_files"]


def copy_tokenizer_files(src: Path | None, dst: Path) -> list[str]:
    """Copy the tokenizer files that ``src`` has into ``dst`` (never over a file already there)."""
    copied: list[str] = []
    if src is None or not src.is_dir():
        return copied
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
