"""Upload a checkpoint to the hub in one commit, with its model card: the transfer ``vhctl push`` ends with.

Every file the manifest lists goes up in one commit, and files an earlier vhctl push left that the
checkpoint no longer has are deleted; anything else in the repo is left alone. The token comes from
the ``token`` argument, else ``HF_TOKEN`` or the saved HF login; it is never printed or stored.
Checking the checkpoint first and the dry run are the operation's
(:func:`vhctl.ops.push.push_checkpoint`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhctl._version import __version__
from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import KIND_REFERENCE, MANIFEST_NAME, MODEL_CARD_NAME
from vhctl.errors import (
    AuthError,
    CheckpointError,
    HubError,
    ManifestError,
    OfflineError,
    UsageError,
    VhctlError,
)
from vhctl.hub.card import card_for_push, format_size
from vhctl.io.files import safe_relpath
from vhctl.io.hub import hub_endpoint, hub_offline, is_repo_id, server_message, status_of, transport_errors

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["Progress", "PushResult", "check_repo_id", "files_to_upload", "upload_checkpoint", "upload_sizes"]

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")

Progress = Callable[[str], None]


@dataclass
class PushResult:
    """What a push did; ``commit_oid`` is None when nothing changed (or on a dry run)."""

    repo_id: str
    revision: str
    commit_oid: str | None
    pr_url: str | None
    files: list[str]
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    commit_url: str | None = None
    size: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id that is not ``namespace/name`` (or a bare name)."""
    if not is_repo_id(repo_id):
        raise UsageError(f"invalid repo id {repo_id!r}", hint="use namespace/name, e.g. 'alice/gpt2-critic'")


def upload_checkpoint(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Upload the checkpoint ``folder`` (checked by the caller) and its model card in one commit.

    Args:
        folder: the checkpoint (a folder with ``vhctl.json``).
        repo_id: ``namespace/name`` (created if missing; ``private`` applies to a new repo).
        private: make a new repo private; refuse to push to an existing public repo.
        revision: the branch to push to (created from ``main`` if missing).
        message: the commit title (default: one naming the checkpoint).
        create_pr: open a pull request instead of committing to the branch.
        endpoint: the hub URL (default ``HF_ENDPOINT``).
        token: default ``HF_TOKEN`` or the saved login.
        progress: called with one-line progress messages.

    Returns:
        A :class:`PushResult`; its ``commit_oid`` is None when the hub already had these files.

    Raises:
        CheckpointError: a listed file links outside the checkpoint, or is not there.
        AuthError, OfflineError, HubError: as :func:`vhctl.ops.push.push_checkpoint`.
    """
    say = progress or (lambda _msg: None)
    root = Path(folder)
    check_repo_id(repo_id)
    manifest = Manifest.read(root)
    files = files_to_upload(root, manifest)
    if hub_offline():
        raise OfflineError(
            f"cannot push {root} to {repo_id}: HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE to push"
        )
    url = hub_endpoint(endpoint)
    try:
        return _push(root, repo_id, manifest=manifest, files=files, private=private, revision=revision,
                     message=message, create_pr=create_pr, endpoint=url, token=token, say=say)  # fmt: skip
    except (VhctlError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise _push_error(exc, repo_id, url, token) from exc


def upload_sizes(files: dict[str, Path], card: bytes) -> dict[str, int]:
    """Bytes of each file an upload sends (the model card included)."""
    return {rel: path.stat().st_size for rel, path in files.items()} | {MODEL_CARD_NAME: len(card)}


def files_to_upload(root: Path, manifest: Manifest) -> dict[str, Path]:
    """Every file the manifest (and its nested references' manifests) lists, plus the manifests.

    Raises:
        CheckpointError: a file links outside the checkpoint, or is not a file.
    """
    real_root = root.resolve()
    out: dict[str, Path] = {}

    def add(rel: str) -> None:
        rel = safe_relpath(rel, what="file path")
        path = root / rel
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise CheckpointError(
                f"{path} links to {real}, outside the checkpoint: refusing to upload it",
                hint="replace the link with a copy of the file",
            )
        if not real.is_file():
            raise CheckpointError(
                f"{path} is listed in {MANIFEST_NAME} but is not a file", hint="run vhctl validate"
            )
        out[rel] = path

    def add_checkpoint(prefix: str, m: Manifest) -> None:
        for rel in m.files:
            add(prefix + rel)
        add(prefix + MANIFEST_NAME)

    add_checkpoint("", manifest)
    for ref in manifest.references:
        ref_rel = safe_relpath(ref, what="reference path")
        add_checkpoint(ref_rel + "/", Manifest.read(root / ref_rel))
    return out


def _write_card(root: Path, card: bytes) -> None:
    """Keep the card next to the checkpoint; a read-only folder still gets it on the hub."""
    path = root / MODEL_CARD_NAME
    tmp = path.with_name(f".{MODEL_CARD_NAME}.vhctl.tmp")
    try:
        if path.is_file() and path.read_bytes() == card:
            return
        tmp.write_bytes(card)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _push(
    root: Path,
    repo_id: str,
    *,
    manifest: Manifest,
    files: dict[str, Path],
    private: bool,
    revision: str | None,
    message: str | None,
    create_pr: bool,
    endpoint: str,
    token: str | None,
    say: Progress,
) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="vhctl", library_version=__version__)
    say(f"using {endpoint}/{repo_id}")
    repo_id = api.create_repo(
        repo_id, private=private, exist_ok=True
    ).repo_id  # a bare name gains its namespace
    if private and not api.model_info(repo_id).private:
        raise HubError(
            f"{repo_id} already exists and is public: --private does not change an existing repo",
            hint="make it private in the repo settings first, or push without --private",
        )
    target = revision or "main"
    if revision is not None and not create_pr and not _ref_exists(api, repo_id, revision):
        say(f"creating branch {revision}")
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = card_for_push(root, repo_id).encode("utf-8")
    _write_card(root, card)
    sizes = upload_sizes(files, card)
    names, size = sorted(sizes), sum(sizes.values())
    parent = str(api.repo_info(repo_id, revision=target).sha)
    stale = _stale_files(api, repo_id, parent, set(names))
    operations: list[Any] = [CommitOperationAdd(rel, str(path)) for rel, path in sorted(files.items())]
    operations.append(CommitOperationAdd(MODEL_CARD_NAME, card))
    operations += [CommitOperationDelete(path) for path in stale]
    say(f"uploading {len(names)} files ({format_size(size)}) to {repo_id}@{target} in one commit")
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=message or _default_message(manifest),
        commit_description=f"Pushed with vhctl {__version__}.",
        revision=revision,
        create_pr=create_pr,
        parent_commit=None if create_pr else parent,
    )
    changed = info.pr_url is not None if create_pr else info.oid != parent
    if create_pr and info.pr_revision:
        target = info.pr_revision
    return PushResult(
        repo_id=repo_id,
        revision=target,
        commit_oid=info.oid if changed else None,
        pr_url=info.pr_url,
        files=names,
        dry_run=False,
        deleted=stale,
        commit_url=info.commit_url if changed else None,
        size=size,
        sizes=sizes,
    )


def _default_message(manifest: Manifest) -> str:
    kind = "reference" if manifest.kind == KIND_REFERENCE else "value-head"
    return f"Upload {manifest.model_type} {kind} checkpoint with vhctl"


def _ref_exists(api: HfApi, repo_id: str, revision: str) -> bool:
    if _COMMIT_RE.fullmatch(revision):
        return True
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    names = {b.name for b in refs.branches} | {b.ref for b in refs.branches}
    names |= {p.ref for p in refs.pull_requests or []}
    return revision in names


def _stale_files(api: HfApi, repo_id: str, parent: str, keep: set[str]) -> list[str]:
    """Files an earlier vhctl push uploaded (per the hub's vhctl.json) that this checkpoint lacks.

    Anything else in the repo (files the user added by hand) is left alone.
    """
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import EntryNotFoundError

    remote = {
        f.path
        for f in api.list_repo_tree(repo_id, revision=parent, recursive=True)
        if isinstance(f, RepoFile)
    }
    if MANIFEST_NAME not in remote:
        return []
    owned: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="vhctl-hub-") as tmp:

        def manifest_at(prefix: str) -> Manifest | None:
            try:
                path = api.hf_hub_download(repo_id, prefix + MANIFEST_NAME, revision=parent, cache_dir=tmp)
                return Manifest.read(Path(path).parent)
            except (EntryNotFoundError, ManifestError):
                return None

        top = manifest_at("")
        if top is None:
            return []
        owned |= set(top.files) | {MANIFEST_NAME}
        for ref in top.references:
            ref_manifest = manifest_at(f"{ref}/")
            if ref_manifest is not None:
                owned |= {f"{ref}/{rel}" for rel in ref_manifest.files} | {f"{ref}/{MANIFEST_NAME}"}
    return sorted((owned & remote) - keep)


def _push_error(exc: Exception, repo_id: str, endpoint: str, token: str | None) -> Exception:
    """One clear vhctl error for whatever huggingface_hub raised while pushing."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    status = status_of(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return OfflineError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE to push"
        )
    if status == 401:
        if not token and get_token() is None:
            return AuthError(
                f"pushing to {repo_id} needs a token and none was found",
                hint="pass --token, set HF_TOKEN or run `hf auth login`",
            )
        return AuthError(
            f"the hub at {endpoint} refused the token for {repo_id} (401 Unauthorized)",
            hint="check --token / HF_TOKEN, or log in again with `hf auth login`",
        )
    if status == 403:
        return AuthError(
            f"the token cannot write to {repo_id} (403 Forbidden)",
            hint="use a token with write access to this namespace",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"{repo_id} has no branch to push to: {server_message(exc)}",
            hint="a pull request needs an existing target branch; push to it first",
        )
    if status == 404:
        return HubError(
            f"the hub at {endpoint} does not let this token write to {repo_id} (404)",
            hint="check the namespace and the token's rights",
        )
    if status == 412:
        return HubError(f"{repo_id} changed on the hub while pushing (412)", hint="run the push again")
    if isinstance(exc, transport_errors()):
        return OfflineError(
            f"cannot reach the hub at {endpoint}: {exc}",
            hint="check the network, HF_ENDPOINT and proxy settings",
        )
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the hub at {endpoint} refused the push to {repo_id}: {server_message(exc)}")
    if isinstance(exc, (OSError, ValueError, RuntimeError)):
        return HubError(f"pushing to {repo_id} failed: {exc}")
    return exc
