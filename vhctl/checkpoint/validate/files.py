"""The manifest and the files it lists: presence, sizes, hashes, symlinks, stray and pickle files.

These checks read no tensor: they compare the folder with ``vhctl.json`` and parse the
safetensors headers the later checks need.
"""

from __future__ import annotations

import os
from pathlib import Path

from vhctl.checkpoint.manifest import Manifest, iter_checkpoint_files, manifest_type_errors
from vhctl.checkpoint.tensors import read_header
from vhctl.checkpoint.validate.state import CheckState
from vhctl.constants import KIND_REFERENCE, MANIFEST_NAME
from vhctl.errors import CheckpointError, VhctlError
from vhctl.io.files import safe_relpath, sha256_file

__all__ = [
    "PICKLE_SUFFIXES",
    "check_files",
    "check_manifest",
    "check_symlinks",
    "read_headers",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


def check_manifest(state: CheckState) -> None:
    """Read ``vhctl.json``; trust its fields (``state.manifest``) only when every one is well typed."""
    path = state.root / MANIFEST_NAME
    if not path.exists():
        state.add(
            "manifest-missing",
            MANIFEST_NAME,
            "no vhctl.json: this folder is not a vhctl checkpoint "
            "(make one with 'vhctl wrap MODEL --out DIR')",
        )
        return
    if not path.is_file():
        state.add("manifest-invalid", MANIFEST_NAME, "vhctl.json is not a regular file")
        return
    try:
        manifest = Manifest.read(state.root)
    except VhctlError as exc:
        state.add("manifest-invalid", MANIFEST_NAME, str(exc))
        return
    except OSError as exc:
        state.add("manifest-invalid", MANIFEST_NAME, f"cannot read vhctl.json: {exc.strerror or exc}")
        return
    # The file list is checked by Manifest itself, so hashes can be verified even when other
    # fields are broken; the rest of the manifest is only trusted when every field is well typed.
    state.manifest_files = dict(manifest.files)
    errors = manifest_type_errors(manifest)
    for error in errors:
        state.add("manifest-invalid", MANIFEST_NAME, error)
    if errors:
        return
    state.head_rel = safe_relpath(manifest.value_head.file)
    if manifest.kind == KIND_REFERENCE and manifest.reference is not None:
        state.policy_dir = (state.root / str(manifest.reference.policy)).resolve()
    state.manifest = manifest


def _hub_cache_blobs(root: Path) -> list[Path]:
    """The blob store of the Hugging Face cache repo that ``root`` is a snapshot of (or inside).

    Files in a cache snapshot (``models--org--name/snapshots/<rev>/``) are symlinks to
    ``../../blobs/<hash>``: those links stay inside the downloaded repo and are fine.
    """
    for folder in (root, *root.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(
            ("models--", "datasets--", "spaces--")
        ):
            return [folder.parent.parent / "blobs"]
    return []


def _inside(target: Path, roots: list[Path]) -> bool:
    return any(target == r or r in target.parents for r in roots)


def check_symlinks(state: CheckState) -> None:
    """Report symlinks leading out of the folder, list the checkpoint's files, flag pickle files."""
    root = state.root
    allowed = [root, *_hub_cache_blobs(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames) + filenames:
            entry = here / name
            if not entry.is_symlink():
                continue
            rel = entry.relative_to(root).as_posix()
            target = Path(os.path.realpath(entry))
            if not _inside(target, allowed):
                state.outside.add(rel)
                state.add(
                    "symlink-outside",
                    rel,
                    f"is a symlink to {os.readlink(entry)}, outside the checkpoint "
                    "folder; copy the file in instead",
                )
        # Nested checkpoints are validated on their own; symlinked folders are not followed.
        dirnames[:] = [
            d for d in dirnames if not (here / d).is_symlink() and not (here / d / MANIFEST_NAME).exists()
        ]
    state.files = [f for f in iter_checkpoint_files(root) if f not in state.outside]
    for rel in state.files:
        if rel.lower().endswith(PICKLE_SUFFIXES):
            state.add(
                "pickle-file",
                rel,
                "is a pickle file; vhctl never loads it unless asked (--allow-pickle); prefer safetensors",
            )


def check_files(state: CheckState) -> None:
    """Each listed file is there with its recorded size and sha256; unlisted files are warnings."""
    if not state.manifest_files:
        return
    for rel, entry in sorted(state.manifest_files.items()):
        if state.is_outside(rel):
            continue
        path = state.root / rel
        if not path.is_file():
            state.reported_missing.add(rel)
            state.add("file-missing", rel, "is listed in the manifest but not in the folder")
            continue
        try:
            size = path.stat().st_size
            if size != entry.size:
                state.add(
                    "size-mismatch",
                    rel,
                    f"is {size} bytes, the manifest says {entry.size} (truncated or replaced)",
                )
                continue
            digest = sha256_file(path)
        except OSError as exc:
            state.add("file-unreadable", rel, f"cannot be read: {exc.strerror or exc}")
            continue
        if digest != entry.sha256:
            state.add("hash-mismatch", rel, _mismatch(state, rel, digest, entry.sha256))
    listed = set(state.manifest_files)
    for rel in state.files:
        if rel not in listed:
            state.add(
                "unexpected-file",
                rel,
                "is not listed in the manifest (added after the checkpoint was written?)",
            )


def _mismatch(state: CheckState, rel: str, digest: str, recorded: str) -> str:
    """The hash-mismatch message, naming the likely cause: a recorded digest that was a Hugging Face
    cache blob's name (not read when the checkpoint was made) points at that blob first."""
    found = f"has sha256 {digest[:12]}..., the manifest says {recorded[:12]}..."
    blob = state.manifest.cache_blob_of(rel) if state.manifest is not None else None
    if blob is None:
        return f"{found} (the file changed, or the manifest was edited)"
    cache = Path(blob).parent.parent.parent
    return (
        f"{found}, which wrap took from the name of the Hugging Face cache blob {blob} without reading "
        f"it: that blob is likely corrupt in the cache {cache} (or the file changed since; 'vhctl wrap "
        f"--verify' checks a blob's bytes)"
    )


def read_headers(state: CheckState) -> None:
    """Parse every safetensors header once (``None`` for a corrupt one, which is reported)."""
    for rel in state.files:
        if not rel.endswith(".safetensors"):
            continue
        try:
            state.headers[rel] = read_header(state.root / rel)
        except CheckpointError as exc:
            state.headers[rel] = None
            state.add("corrupt-header", rel, str(exc).replace(str(state.root / rel), "the file", 1))
