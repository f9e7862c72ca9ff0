"""One scoring run from options to results: devices, the input stream, the model, the scorer.

Used by ``vhctl score`` in one process or under ``torchrun`` / ``accelerate launch``
(:func:`run_distributed`). Nothing here prints: the caller writes results and reports errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from vhctl.errors import InputError, PeerError, UsageError, VhctlError, describe_error
from vhctl.io.records import LineReader, iter_records
from vhctl.scoring import distributed
from vhctl.scoring.compiled import estimate_lines
from vhctl.scoring.device import resolve_device, resolve_dtype
from vhctl.scoring.pairs import PairScoring, PairSummary
from vhctl.scoring.pipeline import ScoreOptions, finish_result, load_scoring_model, make_scorer
from vhctl.scoring.scorer import Scorer

__all__ = ["RankExit", "ScoreRun", "rank_device", "run_distributed", "start_run"]


class RankExit(Exception):
    """This rank ends with ``code`` once the error has been reported (by rank 0)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class ScoreRun:
    """A run set up and ready to stream: ``results`` yields one finite, JSON-ready dict per input line."""

    scorer: Scorer
    results: Iterator[dict[str, Any]]
    device: torch.device
    dtype: torch.dtype
    group: distributed.Group | None
    interactive: bool
    pairs: PairSummary = field(default_factory=PairSummary)  # preference pairs' accuracy

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main


def _open_input(path: str, stack: contextlib.ExitStack) -> IO[bytes]:
    """stdin (binary) for '-', else the file opened in binary mode (lines are decoded per line)."""
    if path == "-":
        return sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin  # type: ignore[return-value]
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path} not found", hint="give a file of text lines or JSONL, or '-'")
    return stack.enter_context(open(file, "rb"))


def rank_device(options: ScoreOptions, group: distributed.Group) -> str:
    """This rank's device (``cuda:LOCAL_RANK`` for auto/cuda); a device map is refused with several per node."""
    if options.device_map is not None and group.launch.local_world > 1:
        raise UsageError(
            f"--device-map spreads the model over every GPU of the node, and {group.launch.local_world} "
            "processes per node would each do that",
            hint="use one process per node with --device-map (torchrun --nproc-per-node 1), or drop it",
        )
    return distributed.local_device(options.device, group.launch)


def _records(
    options: ScoreOptions, run: ScoreRun, stream: IO[bytes] | None, stream_input: bool, pairing: PairScoring
) -> Iterator[Any]:
    """The input as records, and whether a window may end where the input pauses."""
    group, main = run.group, run.is_main
    reader = LineReader(stream) if stream is not None and stream_input else None
    ready = reader.ready if reader is not None else None
    source = reader if reader is not None else stream
    records = iter_records(source, skip_bad=options.skip_bad, pairs=True) if source is not None else None
    if group is not None and (options.input == "-" or stream_input):
        # One reader (rank 0) for stdin; with --stream also for a file, so that every rank
        # ends its windows where rank 0's input paused.
        records = group.records(records if main else None, chunk=run.scorer.window, ready=ready)
        ready = group.ready if stream_input else None
    expected = estimate_lines(options.input) if options.input != "-" and main else None  # compile=auto
    if group is not None:
        expected = group.broadcast(expected)  # rank 0's: every rank takes the same compile decisions
    return run.scorer.score(pairing.expand(records), ready=ready, expected_records=expected)  # type: ignore[arg-type]


def start_run(
    options: ScoreOptions, group: distributed.Group | None, stack: contextlib.ExitStack, *,
    terminal: bool = False, progress: bool = False,
) -> ScoreRun:  # fmt: skip
    """Set up a run: devices, input, model, scorer. ``terminal``: stdin is a terminal (score each line
    as it is typed). Under a process group, a failure on any rank stops every rank alike."""
    main = group is None or group.is_main
    failure: tuple[str, int] | None = None
    run = None
    normalization = None
    try:
        spec = options.device if group is None else rank_device(options, group)
        device = resolve_device(spec if options.device_map is None else "auto")
        if group is not None and device.type == "cuda" and options.device_map is None:
            torch.cuda.set_device(device)
        dtype = resolve_dtype(options.dtype, device)
        # stdin (and any input with --stream): only rank 0 reads it, then broadcasts it
        reading = main or (options.input != "-" and not options.stream)
        stream = _open_input(options.input, stack) if reading else None
        loaded = load_scoring_model(options, device, dtype, progress=progress)
        normalization = loaded.normalization
        interactive = options.input == "-" and main and terminal
        if interactive and group is None and options.compile == "auto":  # typed lines: no compile pause
            options = dataclasses.replace(options, compile="off")
        scorer = make_scorer(loaded, options, group=group)
        if options.device_map is not None:
            device = scorer.input_device
        run = ScoreRun(scorer, iter(()), device, dtype, group, interactive)
    except (VhctlError, OSError, MemoryError) as exc:
        if group is None:
            raise
        failure = describe_error(exc)
    stream_input = options.stream or (run is not None and run.interactive)  # a terminal: line by line
    if group is not None:
        group.agree(failure)  # every rank raises the first failure: none waits for a failed one
        stream_input = group.broadcast(stream_input)  # rank 0's (True when reading a terminal)
    assert run is not None
    run.pairs = PairSummary(by="reward" if options.reward is not None else "value")
    pairing = PairScoring(run.pairs)  # a pair is scored as two records, merged back into one result
    results = _records(options, run, stream, stream_input, pairing)
    run.results = pairing.merge(finish_result(result, normalization) for result in results)
    return run


def _quiet_rank() -> None:
    """Ranks other than 0 log nothing: rank 0 reports for the job (errors, warnings, summary)."""
    from transformers.utils import logging as hf_logging

    logging.getLogger("vhctl").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()


def run_distributed(
    options: ScoreOptions, launch: distributed.Launch, body: Callable[[distributed.Group], None],
    report: Callable[[BaseException], None],
) -> None:  # fmt: skip
    """Data-parallel scoring: every rank runs ``body`` on its share; rank 0 writes and reports.

    An error every rank meets alike (a bad line, a set-up failure shared by :meth:`Group.agree`) is
    passed to ``report`` once, by rank 0, and every rank raises :class:`RankExit` with its code after
    a barrier: a launcher stops all workers as soon as one fails, and rank 0 must have reported by then.
    """
    cuda = distributed.local_device(options.device, launch).startswith("cuda") or (
        options.device_map is not None and torch.cuda.is_available()
    )
    group = distributed.start(launch, cuda=cuda)
    if not group.is_main:
        _quiet_rank()
    try:
        body(group)
    except distributed.Stopped:  # rank 0's output was closed (e.g. `| head`): a normal end
        return
    except (InputError, PeerError) as exc:
        if group.is_main:
            report(exc)
        group.barrier()
        raise RankExit(exc.exit_code) from None
    finally:
        group.close()
