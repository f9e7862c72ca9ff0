"""One scoring run from options to results: devices, the input stream, the model, the scorer.

Used by ``vhctl score`` in one process or under ``torchrun`` / ``accelerate launch``
(:func:`distributed_run`). Nothing here prints: the caller writes results and reports errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from vhctl.errors import InputError, PeerError, UsageError, VhctlError, describe_error
from vhctl.io.records import LineReader, iter_records
from vhctl.scoring import distributed
from vhctl.scoring.compiled import estimate_lines
from vhctl.scoring.options import ScoreOptions
from vhctl.scoring.scorer import Scorer
from vhctl.scoring.session import ScoringSession

__all__ = ["RankExit", "RunInput", "ScoreRun", "distributed_run", "start_run"]


class RankExit(Exception):
    """This rank ends with ``code`` once the error has been reported (by rank 0)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class RunInput:
    """Where ``vhctl score`` reads its records: a file or '-' (stdin), and whether to stream it."""

    path: str = "-"
    stream: bool = False


@dataclass
class ScoreRun:
    """A run set up and ready to stream: ``results`` yields one finite, JSON-ready dict per input line."""

    session: ScoringSession
    results: Iterator[dict[str, Any]]
    device: torch.device
    dtype: torch.dtype
    group: distributed.Group | None
    interactive: bool

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main

    @property
    def scorer(self) -> Scorer:
        """The scorer the run uses (its ``stats`` make the summary)."""
        return self.session.scorer()


def _open_input(path: str, stack: contextlib.ExitStack) -> IO[bytes]:
    """stdin (binary) for '-', else the file opened in binary mode (lines are decoded per line)."""
    if path == "-":
        return sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin  # type: ignore[return-value]
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path} not found", hint="give a file of text lines or JSONL, or '-'")
    return stack.enter_context(open(file, "rb"))


def _records(
    source_input: RunInput, run: ScoreRun, stream: IO[bytes] | None, stream_input: bool
) -> Iterator[dict[str, Any]]:
    """The finished results of the input's records (a window may end where the input pauses)."""
    options = run.session.options
    group, main = run.group, run.is_main
    reader = LineReader(stream) if stream is not None and stream_input else None
    ready = reader.ready if reader is not None else None
    source = reader if reader is not None else stream
    records = iter_records(source, skip_bad=options.skip_bad) if source is not None else None
    if group is not None and (source_input.path == "-" or stream_input):
        # One reader (rank 0) for stdin; with --stream also for a file, so that every rank
        # ends its windows where rank 0's input paused.
        records = group.records(records if main else None, chunk=run.scorer.window, ready=ready)
        ready = group.ready if stream_input else None
    path = source_input.path
    expected = estimate_lines(path) if path != "-" and main else None  # compile=auto
    if group is not None:
        expected = group.broadcast(expected)  # rank 0's: every rank takes the same compile decisions
    return run.session.score(records, ready=ready, expected_records=expected)  # type: ignore[arg-type]


def start_run(
    options: ScoreOptions, source_input: RunInput, group: distributed.Group | None,
    stack: contextlib.ExitStack, *, terminal: bool = False, progress: bool = False,
) -> ScoreRun:  # fmt: skip
    """Set up a run: input, session (device, model, scorer). ``terminal``: stdin is a terminal (score
    each line as it is typed). Under a process group, a failure on any rank stops every rank alike."""
    main = group is None or group.is_main
    failure: tuple[str, int] | None = None
    run = None
    try:
        # stdin (and any input with --stream): only rank 0 reads it, then broadcasts it
        reading = main or (source_input.path != "-" and not source_input.stream)
        stream = _open_input(source_input.path, stack) if reading else None
        interactive = source_input.path == "-" and main and terminal
        if interactive and group is None and options.compile == "auto":  # typed lines: no compile pause
            options = dataclasses.replace(options, compile="off")
        session = ScoringSession.open(options, group=group, progress=progress)
        run = ScoreRun(session, iter(()), session.device, session.dtype, group, interactive)
    except (VhctlError, OSError, MemoryError) as exc:
        if group is None:
            raise
        failure = describe_error(exc)
    stream_input = source_input.stream or (run is not None and run.interactive)  # a terminal: line by line
    if group is not None:
        group.agree(failure)  # every rank raises the first failure: none waits for a failed one
        stream_input = group.broadcast(stream_input)  # rank 0's (True when reading a terminal)
    assert run is not None
    run.results = _records(source_input, run, stream, stream_input)
    return run


def _quiet_rank() -> None:
    """Ranks other than 0 log nothing: rank 0 reports for the job (errors, warnings, summary)."""
    from transformers.utils import logging as hf_logging

    logging.getLogger("vhctl").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def distributed_run(
    options: ScoreOptions, launch: distributed.Launch, report: Callable[[BaseException], None]
) -> Iterator[distributed.Group]:
    """Data-parallel scoring: join the launch's process group for the ``with`` body, in which each
    rank scores its share (:func:`start_run` with the group) and rank 0 writes.

    An error every rank meets alike (a bad line, a set-up failure shared by :meth:`Group.agree`) is
    passed to ``report`` once, by rank 0, and every rank raises :class:`RankExit` with its code after
    a barrier: a launcher stops all workers as soon as one fails, and rank 0 must have reported by then.
    A closed output on rank 0 (``| head``) ends the run normally.
    """
    cuda = distributed.local_device(options.device, launch).startswith("cuda") or (
        options.device_map is not None and torch.cuda.is_available()
    )
    group = distributed.start(launch, cuda=cuda)
    if not group.is_main:
        _quiet_rank()
    try:
        yield group
    except distributed.Stopped:  # rank 0's output was closed (e.g. `| head`): a normal end
        return
    except (InputError, PeerError) as exc:
        if group.is_main:
            report(exc)
        group.barrier()
        raise RankExit(exc.exit_code) from None
    finally:
        group.close()
