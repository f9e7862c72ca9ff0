"""Writing a scoring run's results to stdout (JSON Lines, flushed as they come) and its summary to stderr.

Shared by ``vhctl score`` (and any command that streams results): a closed pipe (``| head``) ends
the run quietly, and the progress spinner appears only on a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import typer

from vhctl.cli._output import progress_enabled, silence_stdout, success, warning

if TYPE_CHECKING:
    import torch

    from vhctl.scoring.distributed import Group
    from vhctl.scoring.scorer import Scorer

__all__ = ["report_summary", "write_results"]


def write_results(results: Iterable[dict[str, Any]], on_closed: Callable[[], None] | None = None) -> None:
    """One compact JSON object per line, flushed as it comes; a closed pipe (``| head``) ends quietly.

    ``on_closed`` (data-parallel runs) asks the other ranks to stop; the results are then drained
    unwritten until they do, so no rank is left waiting in a collective.
    """
    out = sys.stdout
    progress = None
    if progress_enabled():
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        progress = Progress(
            SpinnerColumn(), TextColumn("scored {task.completed} line(s)"), TimeElapsedColumn(),
            console=Console(file=sys.stderr), transient=True,
        )  # fmt: skip
    try:
        with progress if progress is not None else ExitStack():
            task = progress.add_task("score", total=None) if progress is not None else None
            for result in results:
                out.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
                out.flush()
                if progress is not None and task is not None:
                    progress.advance(task)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop scoring, and keep Python from complaining at exit.
        silence_stdout()
        if on_closed is not None:
            on_closed()
            for _ in results:
                pass
        raise typer.Exit(0) from None


def report_summary(
    scorer: Scorer, elapsed: float, device: torch.device, dtype: torch.dtype, group: Group | None
) -> None:
    """Warnings for skipped and truncated lines, then one line with counts and throughput."""
    stats = scorer.stats  # the same on every rank: each sees every record of the input
    if stats.errors:
        warning(f"{stats.errors} bad line(s) skipped (see their error records)")
    if stats.truncated:
        warning(f"{stats.truncated} input(s) longer than {scorer.max_length} tokens kept only their end")
    shared = (
        f", {stats.shared_prompts} prompt forward(s) saved by prefix sharing" if stats.shared_prompts else ""
    )
    where = f"{device}" if group is None else f"{group.world} processes ({device.type})"
    success(
        f"scored {stats.records} line(s), {stats.tokens} tokens in {elapsed:.1f}s "
        f"({stats.tokens / elapsed:,.0f} tokens/s on {where}, {str(dtype).removeprefix('torch.')}"
        f"{shared})"
    )
