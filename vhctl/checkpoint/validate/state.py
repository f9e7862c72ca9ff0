"""What the checks of one validation learn and pass on to each other (a plain record).

The runner creates one ``CheckState`` per checkpoint folder and hands it to each check in turn:
the manifest check fills ``manifest``, the file checks ``files`` and ``headers``, the config check
``hidden`` and ``model``, and the later checks read them. A nested reference gets its own state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhctl.checkpoint.manifest import FileEntry, Manifest
from vhctl.checkpoint.tensors import SafetensorsHeader, TensorInfo
from vhctl.checkpoint.validate.problems import Findings
from vhctl.constants import VALUE_HEAD_NAME

__all__ = [
    "CheckState",
    "KeyMapper",
    "ModelFacts",
    "ModuleShape",
]

# checkpoint key -> (model key, whether a converter that reshapes is involved)
KeyMapper = Callable[[str], tuple[str, bool]]


@dataclass
class ModuleShape:
    """A 2-D weight of the base model that an adapter can target."""

    kind: str  # "linear" | "embedding"
    n_in: int
    n_out: int


@dataclass
class ModelFacts:
    """What the model that ``config.json`` describes expects, learned by building it on the meta device."""

    expected: dict[str, tuple[tuple[int, ...], str]]  # state-dict key -> (shape, dtype name)
    tied_groups: list[list[str]]  # keys sharing one tensor (stored once is enough)
    modules: dict[str, ModuleShape]
    keep_fp32: list[str]  # module patterns transformers keeps in float32
    ignore_unexpected: list[str]  # key patterns transformers ignores when present
    ignore_missing: list[str]  # key patterns transformers ignores when absent
    key_mapper: KeyMapper | None  # transformers' load-time renames, when it has that API


@dataclass
class CheckState:
    """The shared state of one checkpoint's validation."""

    root: Path
    deep: bool
    check_policy: bool
    log: Findings
    visited: frozenset[Path] = frozenset()
    # manifest
    manifest: Manifest | None = None  # only set when every field is well typed
    manifest_files: dict[str, FileEntry] = field(default_factory=dict)
    head_rel: str = VALUE_HEAD_NAME
    policy_dir: Path | None = None
    policy_index: dict[str, tuple[Path, TensorInfo]] | None = None
    # files
    files: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)  # symlinks leading out: never read through
    reported_missing: set[str] = field(default_factory=set)
    headers: dict[str, SafetensorsHeader | None] = field(default_factory=dict)  # None: corrupt
    # config and model
    config_dict: dict[str, Any] | None = None
    architecture: str | None = None
    hidden: int | None = None
    model: ModelFacts | None = None

    def add(self, code: str, file: str | None, message: str) -> None:
        self.log.add(code, file, message)

    def add_many(self, code: str, file: str | None, items: list[str], what: str) -> None:
        self.log.add_many(code, file, items, what)

    def is_outside(self, rel: str) -> bool:
        """True when ``rel`` or a folder above it is a symlink leading out (never read through it)."""
        parts = rel.split("/")
        return any("/".join(parts[: i + 1]) in self.outside for i in range(len(parts)))

    def is_peft_policy(self) -> bool:
        m = self.manifest
        return m is not None and isinstance(m.extra, dict) and "peft_policy" in m.extra
