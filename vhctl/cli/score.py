"""``vhctl score``: values (and rewards) for text lines or JSON Lines, streamed as JSON Lines.

Reads stdin or ``--input``; writes one JSON object per input line to stdout, in input order, as
results come (window by window), so it works in pipelines of any length. Messages, the summary
and progress go to stderr. The work is :mod:`vhctl.scoring.run`'s; this module parses and writes.
"""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import (
    AllowPickleOpt,
    BatchSizeOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    MaxLengthOpt,
    NormalizeOpt,
    PrefixCacheOpt,
    RevisionOpt,
    RewardAdapterOpt,
    RewardOpt,
    TokenOpt,
    TrustRemoteCodeOpt,
)
from vhctl.cli._output import error, message, progress_enabled, state
from vhctl.cli._results import report_summary, write_results
from vhctl.cli._score_data import (
    ColumnOpt,
    DataArgs,
    DatasetConfigOpt,
    DatasetOpt,
    DatasetRevisionOpt,
    EngineOpt,
    GpusPerActorOpt,
    OutputOpt,
    RayActorsOpt,
    RayAddressOpt,
    SplitOpt,
    SummaryOpt,
    report_pairs,
    score_data,
)
from vhctl.errors import UsageError, describe_error

__all__ = ["score"]

if TYPE_CHECKING:
    from vhctl.scoring.distributed import Group
    from vhctl.scoring.options import ScoreOptions
    from vhctl.scoring.run import RunInput

CkptArg = Annotated[
    str,
    typer.Argument(
        metavar="CKPT",
        show_default=False,
        help="A vhctl checkpoint (folder or hub id), or a TRL checkpoint that holds its value head.",
    ),
]
InputOpt = Annotated[
    str,
    typer.Option("--input", "-i", metavar="FILE", help="Text lines or JSON Lines to score; '-' reads stdin."),
]
PerTokenOpt = Annotated[bool, typer.Option("--per-token", help="Also output 'values', one per token.")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        metavar="STRATEGY",
        show_default=False,
        help="Spread a model too large for one GPU over the GPUs with accelerate: auto, balanced, "
        "balanced_low_0 or sequential.",
    ),
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Write an error record for a bad line and go on.")
]
NoPrefixSharingOpt = Annotated[
    bool, typer.Option("--no-prefix-sharing", help="Run every line in full, even when prompts repeat.")
]
StreamOpt = Annotated[
    bool,
    typer.Option(
        "--stream",
        help="Score lines as they arrive: a window also ends when no more input is waiting (for a "
        "slow producer); values may then differ in the last bits between runs.",
    ),
]


@handle_errors
def score(
    ckpt: CkptArg,
    extra: Annotated[list[str] | None, typer.Argument(hidden=True, show_default=False)] = None,
    input_: InputOpt = "-",
    output: OutputOpt = None,
    summary: SummaryOpt = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    dataset_config: DatasetConfigOpt = None,
    dataset_revision: DatasetRevisionOpt = None,
    column: ColumnOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: RayActorsOpt = 1,
    gpus_per_actor: GpusPerActorOpt = 0.0,
    reward: RewardOpt = False,
    reward_adapter: RewardAdapterOpt = None,
    per_token: PerTokenOpt = False,
    batch_size: BatchSizeOpt = 16,
    max_length: MaxLengthOpt = None,
    device: DeviceOpt = "auto",
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "auto",
    skip_bad: SkipBadOpt = False,
    no_prefix_sharing: NoPrefixSharingOpt = False,
    stream: StreamOpt = False,
    normalize: NormalizeOpt = False,
    compile_: CompileOpt = "auto",
    prefix_cache_mb: PrefixCacheOpt = 0,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Score text or JSONL with CKPT's value head: one JSON object per input line on stdout.

    Under torchrun or accelerate launch, the ranks share the work and rank 0 writes the same
    output a single process would.
    """
    from vhctl.scoring import distributed
    from vhctl.scoring.compiled import check_compile_choice
    from vhctl.scoring.options import ScoreOptions, check_device_map, reward_choice
    from vhctl.scoring.run import RankExit, RunInput, distributed_run

    if extra:
        raise UsageError(
            f"unexpected argument {extra[0]!r}: score takes one checkpoint",
            hint=f"to score a file, pass --input {extra[0]}" + ("; to pick a reward adapter, --reward-adapter NAME"
                                                            if reward else ""),
        )  # fmt: skip
    options = ScoreOptions(
        ckpt=ckpt, reward=reward_choice(reward, reward_adapter),
        per_token=per_token, batch_size=batch_size, max_length=max_length, device=device,
        device_map=check_device_map(device_map, device), dtype=dtype, skip_bad=skip_bad,
        prefix_sharing=not no_prefix_sharing, prefix_cache_mb=prefix_cache_mb, normalize=normalize,
        revision=revision, token=token, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        compile=check_compile_choice(compile_),
    )  # fmt: skip
    data = DataArgs(output, summary, dataset, split, dataset_config, dataset_revision, column or [], engine,
                    ray_address, actors, gpus_per_actor)  # fmt: skip
    if data.wanted(input_):  # Parquet, Arrow, a dataset, --output or Ray: vhctl.scoring.tables
        score_data(options, data, input_)
        return
    source = RunInput(path=input_, stream=stream)
    launch = distributed.launch_from_env()
    if launch is None:
        _score(options, source, None, summary)
        return
    try:
        with distributed_run(options, launch, _report_rank_error) as group:
            _score(options, source, group, summary)
    except RankExit as exc:
        raise typer.Exit(exc.code) from None


def _report_rank_error(exc: BaseException) -> None:
    text, _ = describe_error(exc)
    if state.verbose:
        traceback.print_exception(exc)
    error(text)


def _score(options: ScoreOptions, source: RunInput, group: Group | None, summary: str | None = None) -> None:
    """Set up, stream the results to stdout (rank 0), report. Other ranks stay quiet."""
    from vhctl.scoring.run import start_run

    if group is not None and not group.is_main:
        state.quiet = True
    with ExitStack() as stack:
        terminal = bool(getattr(sys.stdin, "isatty", lambda: False)())
        run = start_run(options, source, group, stack, terminal=terminal, progress=progress_enabled())
        if run.interactive:
            message("reading lines from the terminal (Ctrl-D ends)")
        started = time.perf_counter()
        if run.is_main:
            write_results(run.results, on_closed=group.request_stop if group is not None else None)
        else:
            for _ in run.results:  # rank 0 writes; this rank's share reaches it through the gather
                pass
    if run.is_main:
        elapsed = max(time.perf_counter() - started, 1e-9)
        report_summary(run.scorer, elapsed, run.device, run.dtype, group)
        report_pairs(run.pairs, run.scorer.stats, elapsed, summary)
