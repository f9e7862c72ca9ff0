"""``vhctl push``: check a checkpoint, then upload it with its model card in one commit.

The operation: refuse a bad repo id or an invalid checkpoint (an invalid one is never uploaded),
answer a dry run with what would go up, else hand over to the hub transfer
(:func:`vhctl.hub.push.upload_checkpoint`: one commit, stale files removed, the card written).
"""

from __future__ import annotations

import os
from pathlib import Path

from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.validate import require_valid
from vhctl.errors import SourceNotFoundError
from vhctl.hub.card import card_for_push
from vhctl.hub.push import (
    Progress,
    PushResult,
    check_repo_id,
    files_to_upload,
    upload_checkpoint,
    upload_sizes,
)

__all__ = ["PushResult", "push_checkpoint"]


def push_checkpoint(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    validate: bool = True,
    progress: Progress | None = None,
) -> PushResult:
    """Validate a checkpoint, write its model card and upload it to the hub in one commit.

    Args:
        folder: the checkpoint (a folder with ``vhctl.json``).
        repo_id: ``namespace/name`` (created if missing; ``private`` applies to a new repo).
        private: make a new repo private; refuse to push to an existing public repo.
        revision: the branch to push to (created from ``main`` if missing).
        message: the commit title (default: one naming the checkpoint).
        create_pr: open a pull request instead of committing to the branch.
        dry_run: validate and list what would be uploaded; no network, nothing written.
        endpoint: the hub URL (default ``HF_ENDPOINT``).
        token: default ``HF_TOKEN`` or the saved login.
        validate: check the checkpoint first (an invalid one is never uploaded).
        progress: called with one-line progress messages.

    Returns:
        A :class:`~vhctl.hub.push.PushResult`; its ``commit_oid`` is None when the hub already had
            these files (and on a dry run).

    Raises:
        CheckpointError: the checkpoint is invalid (an
            :class:`~vhctl.checkpoint.validate.InvalidCheckpointError`, whose ``problems`` lists
            why) or links outside itself.
        AuthError: no token, a wrong token, or one without write access.
        OfflineError: HF_HUB_OFFLINE is set or the hub cannot be reached.
        HubError: the hub refused the push for another reason.
    """
    say = progress or (lambda _msg: None)
    root = Path(folder)
    if not root.is_dir():
        raise SourceNotFoundError(
            f"no such checkpoint folder: {root}", hint="give the folder vhctl wrap wrote"
        )
    check_repo_id(repo_id)
    if validate:
        say(f"validating {root}")
        require_valid(root, refusing="nothing was uploaded")
    if dry_run:
        files = files_to_upload(root, Manifest.read(root))
        sizes = upload_sizes(files, card_for_push(root, repo_id).encode("utf-8"))
        return PushResult(repo_id=repo_id, revision=revision or "main", commit_oid=None, pr_url=None,
                          files=sorted(sizes), dry_run=True, size=sum(sizes.values()), sizes=sizes)  # fmt: skip
    return upload_checkpoint(root, repo_id, private=private, revision=revision, message=message,
                             create_pr=create_pr, endpoint=endpoint, token=token, progress=say)  # fmt: skip
