"""One output sink: data on stdout (Rich tables on a terminal, plain text otherwise, or JSON),
messages and progress on stderr. Colour follows Rich's rules (``NO_COLOR``, non-terminals)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from rich.console import Console

__all__ = [
    "Reportable",
    "Reporter",
    "emit_json",
    "emit_pairs",
    "emit_table",
    "error",
    "is_terminal",
    "message",
    "progress_enabled",
    "silence_stdout",
    "state",
    "success",
    "warning",
]


class _State:
    verbose: int = 0
    quiet: bool = False


state = _State()


def _console(stderr: bool) -> Console:
    # Built per call: CliRunner and tests swap sys.stdout/sys.stderr between invocations.
    stream = sys.stderr if stderr else sys.stdout
    return Console(
        file=stream, stderr=stderr, soft_wrap=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR"))
    )


def is_terminal(stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader went away (``| head``), so that Python's flush at
    exit does not complain about the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A Rich table on a terminal; tab-separated lines with a header otherwise (for grep/cut)."""
    rows = [[("" if c is None else str(c)) for c in row] for row in rows]
    if is_terminal():
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        _console(False).print(table)
    else:
        out = sys.stdout
        out.write(f"# {title}\n")
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(row) + "\n")
        out.flush()


def emit_pairs(title: str, pairs: Iterable[tuple[str, Any]]) -> None:
    emit_table(title, ("field", "value"), pairs)


def message(text: str) -> None:
    """A progress or result line on stderr (silenced by -q)."""
    if not state.quiet:
        _console(True).print(text, markup=False)


def success(text: str, hint: str | None = None) -> None:
    message(text)
    if hint and not state.quiet:
        _console(True).print(f"next: {hint}", markup=False, style="dim")


def warning(text: str) -> None:
    _console(True).print(f"Warning: {text}", markup=False, style="yellow")


def error(text: str) -> None:
    _console(True).print(f"Error: {text}", markup=False, style="bold red")


def progress_enabled() -> bool:
    return is_terminal(stderr=True) and not state.quiet


class Reportable(Protocol):
    """A command's result: anything with ``to_dict()`` (the dataclasses the operations return)."""

    def to_dict(self) -> dict[str, Any]: ...


class Reporter:
    """Renders one command's result in the mode the user chose.

    ``--json``: the result's ``to_dict()`` as one JSON document on stdout; otherwise the human form
    (``human``, e.g. a table) on stdout. Notes become warnings and the summary (with a hint naming
    the next command) goes to stderr, where ``--quiet`` silences it; errors are never silenced.
    """

    def __init__(self, *, json_output: bool = False) -> None:
        self.json_output = json_output

    def done(
        self,
        result: Reportable | Mapping[str, Any] | None,
        summary: str | None,
        *,
        hint: str | None = None,
        notes: Iterable[str] = (),
        human: Callable[[], None] | None = None,
    ) -> None:
        for note in notes:
            warning(note)
        if self.json_output and result is not None:
            emit_json(result if isinstance(result, Mapping) else result.to_dict())
        elif human is not None:
            human()
        if summary is not None:
            success(summary, hint=hint)
