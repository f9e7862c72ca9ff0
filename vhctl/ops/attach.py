"""``attach-reward-adapter``: check a PEFT reward adapter against a checkpoint and store it atomically."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vhctl.checkpoint.adapters import check_adapter_fits, resolve_adapter_dir, store_adapter
from vhctl.checkpoint.config import load_config
from vhctl.checkpoint.manifest import AdapterInfo, FileEntry, Manifest
from vhctl.constants import ADAPTERS_DIR, KIND_POLICY
from vhctl.errors import AdapterError, DestinationExistsError, SourceNotFoundError, UsageError
from vhctl.io.files import atomic_output_dir, link_tree, safe_relpath, sha256_file

__all__ = ["AttachResult", "attach_adapter"]


@dataclass
class AttachResult:
    """The adapter stored: its name and what the manifest records about it."""

    name: str
    info: AdapterInfo

    @property
    def path(self) -> str:
        """Where it is in the checkpoint (``adapters/NAME``)."""
        return self.info.path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.info)}


def attach_adapter(
    ckpt: str | os.PathLike[str],
    adapter: str,
    *,
    name: str = "reward_adapter",
    force: bool = False,
    revision: str | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
) -> AttachResult:
    """Store ``adapter`` under ``ckpt/adapters/<name>/`` and record it in the manifest.

    The checkpoint is rebuilt next to itself (hard links, so no data is copied), the adapter and the
    new manifest are written into that copy, and the copy is swapped in at the end: a killed run
    leaves the checkpoint as it was, and a replaced adapter survives any failure before the swap.
    """

    folder = Path(ckpt).resolve()  # a symlinked checkpoint: swap the real folder, keep the link
    if not folder.is_dir():
        raise SourceNotFoundError(f"{ckpt} does not exist", hint="pass the folder made by 'vhctl wrap'")
    manifest = Manifest.read(folder)
    if manifest.kind != KIND_POLICY:
        raise UsageError(f"{ckpt} is a {manifest.kind} checkpoint", hint="attach adapters to a policy")
    name = safe_relpath(name, what="adapter name")
    if "/" in name or name.startswith("."):
        raise AdapterError(f"adapter name {name!r} must be a plain folder name")
    if name in manifest.adapters and not force:
        raise DestinationExistsError(
            f"{ckpt} already has an adapter named {name!r}",
            hint="pass --force to replace it, or choose another --name",
        )
    source = resolve_adapter_dir(adapter, token=token, revision=revision, allow_pickle=allow_pickle)
    config = load_config(folder, where=str(ckpt))
    prefix = f"{ADAPTERS_DIR}/{name}/"
    with atomic_output_dir(folder, force=True) as tmp:
        link_tree(folder, tmp, skip=lambda rel: rel == prefix.rstrip("/"))
        dest = tmp / ADAPTERS_DIR / name
        info = store_adapter(source, dest, name, allow_pickle=allow_pickle)
        # A converted pickle adapter is checked once it is safetensors.
        check_adapter_fits(
            dest,
            config=config,
            architecture=manifest.architecture,
            hidden_size=manifest.value_head.hidden_size,
            where=str(adapter),
        )
        manifest.adapters[name] = info
        manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith(prefix)}
        for item in sorted(dest.iterdir()):
            manifest.files[prefix + item.name] = FileEntry(size=item.stat().st_size, sha256=sha256_file(item))
        manifest.write(tmp)
    return AttachResult(name, info)
