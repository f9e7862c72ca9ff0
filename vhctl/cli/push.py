"""``vhctl push``: validate a checkpoint, write its model card and upload it in one commit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, JsonOpt, TokenOpt
from vhctl.cli._output import Reporter, emit_table, message, progress_enabled

__all__ = ["push"]


@contextlib.contextmanager
def _hub_progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's upload bars only on a terminal (they go to stderr); restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


@handle_errors
def push(
    ckpt: CkptArg,
    repo_id: Annotated[
        str,
        typer.Argument(
            help="Hub repo id, namespace/name (created if missing).", show_default=False, metavar="REPO_ID"
        ),
    ],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (refused for an existing public repo).")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            metavar="BRANCH",
            show_default=False,
            help="Branch to push to (created from main if missing; default main).",
        ),
    ] = None,
    commit_message: Annotated[
        str | None, typer.Option("--message", "-m", metavar="TEXT", show_default=False, help="Commit title.")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing to the branch.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list what would be uploaded; send nothing.")
    ] = False,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", metavar="URL", help="Hub URL (default: HF_ENDPOINT or huggingface.co)."),
    ] = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Validate CKPT, write its model card (README.md) and upload it to REPO_ID in one commit."""
    from vhctl.hub import format_size
    from vhctl.ops.push import push_checkpoint

    with _hub_progress_bars(progress_enabled()):
        result = push_checkpoint(
            ckpt,
            repo_id,
            private=private,
            revision=revision,
            message=commit_message,
            create_pr=create_pr,
            dry_run=dry_run,
            endpoint=endpoint,
            token=token,
            progress=message,
        )
    where = f"{result.repo_id}@{result.revision}"
    reporter = Reporter(json_output=json_)
    if result.dry_run:
        rows = [(name, format_size(result.sizes[name])) for name in result.files]
        reporter.done(
            result,
            f"dry run: {len(result.files)} files ({format_size(result.size)}) would go to {where}; nothing was sent",
            hint=f"vhctl push {ckpt} {repo_id}" + (f" --revision {revision}" if revision else ""),
            human=lambda: emit_table(f"would upload to {where}", ("file", "size"), rows),
        )
        return
    deleted = f", {len(result.deleted)} stale files removed" if result.deleted else ""
    if result.commit_oid is None:
        reporter.done(result, f"{where} already holds this checkpoint: nothing changed, no commit made")
    elif result.pr_url:
        reporter.done(result, f"opened a pull request on {result.repo_id}: {result.pr_url}{deleted}")
    else:
        reporter.done(
            result,
            f"pushed {ckpt} to {where}: commit {result.commit_oid[:10]}{deleted}",
            hint=f"vhctl wrap {result.repo_id} --out DIR"
            + (f" --revision {result.revision}" if result.revision != "main" else ""),
        )
