"""``vhctl score``: values (and rewards) for text lines or JSON Lines, streamed as JSON Lines.

Reads stdin or ``--input``; writes one JSON object per input line to stdout, in input order, as
results come (window by window), so it works in pipelines of any length. Messages, the summary
and progress go to stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from vhctl.cli._errors import describe, handle_errors
from vhctl.cli._options import AllowPickleOpt, RevisionOpt, TokenOpt, TrustRemoteCodeOpt
from vhctl.cli._output import error, message, progress_enabled, state, success, warning
from vhctl.errors import AdapterError, UsageError, VhctlError

DEFAULT_REWARD = "reward_adapter"
DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies


@handle_errors
def score(
    ckpt: Annotated[str, typer.Argument(help="A vhctl checkpoint folder (or a hub id, or vhctl:tiny).")],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="Text lines or JSON Lines to score; '-' reads stdin.")
    ] = "-",
    reward_name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME", hidden=True, show_default=False, help="The reward adapter, right after --reward."
        ),
    ] = None,
    reward: Annotated[
        bool,
        typer.Option(
            "--reward",
            metavar="[NAME]",
            help="Also output 'reward' from the checkpoint's reward adapter NAME (default: its only one, "
            "or reward_adapter).",
        ),
    ] = False,
    per_token: Annotated[
        bool, typer.Option("--per-token", help="Also output 'values', one per token.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Sequences per forward pass.")
    ] = 16,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            min=1,
            help="Keep the last N tokens of longer inputs (default: the model's limit).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    device_map: Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="Spread a model too large for one GPU over the GPUs with accelerate: auto, balanced, "
            "balanced_low_0 or sequential.",
        ),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Write an error record for a bad line and go on.")
    ] = False,
    no_prefix_sharing: Annotated[
        bool, typer.Option("--no-prefix-sharing", help="Run every line in full, even when prompts repeat.")
    ] = False,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Score lines as they arrive: a window also ends when no more input is waiting (for a "
            "slow producer); values may then differ in the last bits between runs.",
        ),
    ] = False,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize",
            help="Write (value - mean) / std with the reward normalisation the checkpoint carries "
            "(an imported OpenRLHF reward model's mean/std).",
        ),
    ] = False,
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

    if reward_name is not None and not reward:
        raise UsageError(f"unexpected argument {reward_name!r}", hint=f"did you mean --reward {reward_name}?")
    options = _Options(
        ckpt=ckpt,
        input_=input_,
        reward=(reward_name or "") if reward else None,
        per_token=per_token,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        device_map=_device_map(device_map, device),
        dtype=dtype,
        skip_bad=skip_bad,
        prefix_sharing=not no_prefix_sharing,
        stream=stream,
        normalize=normalize,
        revision=revision,
        token=token,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    launch = distributed.launch_from_env()
    if launch is None:
        _score(options, None)
    else:
        _score_distributed(options, launch)


@dataclass(frozen=True)
class _Options:
    ckpt: str
    input_: str
    reward: str | None  # None: no reward; "": the checkpoint's only (or default) reward adapter
    per_token: bool
    batch_size: int
    max_length: int | None
    device: str
    device_map: str | None
    dtype: str
    skip_bad: bool
    prefix_sharing: bool
    stream: bool
    normalize: bool
    revision: str | None
    token: str | None
    allow_pickle: bool
    trust_remote_code: bool


def _device_map(value: str | None, device: str) -> str | None:
    if value is None:
        return None
    choice = value.strip().lower()
    if choice not in DEVICE_MAP_CHOICES:
        raise UsageError(
            f"invalid --device-map {value!r}", hint=f"use one of {', '.join(DEVICE_MAP_CHOICES)}"
        )
    if (device or "auto").strip().lower() != "auto":
        raise UsageError(
            f"--device {device} and --device-map {value} both place the model",
            hint="give only one: --device for one device, --device-map to spread it over several",
        )
    return choice


def _score(options: _Options, group: Any) -> None:
    """Load, score, write. ``group`` (a :class:`vhctl.distributed.Group`) when several processes share the work."""
    from vhctl.io.records import LineReader, iter_records
    from vhctl.scoring import Scorer, resolve_device, resolve_dtype

    main = group is None or group.is_main
    with ExitStack() as stack:
        failure: tuple[str, int] | None = None
        try:
            spec = options.device if group is None else _local_device(options, group)
            torch_device = resolve_device(spec if options.device_map is None else "auto")
            if group is not None and torch_device.type == "cuda" and options.device_map is None:
                import torch

                torch.cuda.set_device(torch_device)
            torch_dtype = resolve_dtype(options.dtype, torch_device)
            # stdin (and any input with --stream): only rank 0 reads it, then broadcasts it
            reading = main or (options.input_ != "-" and not options.stream)
            stream = _open_input(options.input_, stack) if reading else None
            normalization = _normalization(options) if options.normalize else None
            model, tokenizer = _load(options, torch_device, torch_dtype)
            interactive = options.input_ == "-" and main and is_terminal_stdin()
            stream_input = options.stream or interactive  # a terminal: each line as it is typed
            scorer = Scorer(
                model,
                tokenizer,
                batch_size=options.batch_size,
                max_length=options.max_length,
                per_token=options.per_token,
                reward=options.reward is not None,
                prefix_sharing=options.prefix_sharing,
                skip_bad=options.skip_bad,
                shard=group.shard if group is not None else None,
                gather=group.all_gather if group is not None else None,
            )
            if options.device_map is not None:
                torch_device = scorer.input_device
        except (VhctlError, OSError, MemoryError) as exc:
            if group is None:
                raise
            failure = describe(exc)
        if group is not None:
            group.agree(failure)  # every rank raises the first failure: none waits for a failed one
            stream_input = group.broadcast(stream_input)  # rank 0's (True when reading a terminal)
        if interactive:
            message("reading lines from the terminal (Ctrl-D ends)")
        reader = LineReader(stream) if stream is not None and stream_input else None
        ready = reader.ready if reader is not None else None
        source = reader if reader is not None else stream
        records = iter_records(source, skip_bad=options.skip_bad) if source is not None else None
        if group is not None and (options.input_ == "-" or stream_input):
            # One reader (rank 0) for stdin; with --stream also for a file, so that every rank
            # ends its windows where rank 0's input paused.
            records = group.records(records if main else None, chunk=scorer.window, ready=ready)
            ready = group.ready if stream_input else None
        started = time.perf_counter()
        results = scorer.score(records, ready=ready)  # type: ignore[arg-type]
        if normalization is not None:
            results = _normalized(results, normalization)
        if main:
            _write_results(results, scorer, on_closed=group.request_stop if group is not None else None)
        else:
            for _ in results:  # rank 0 writes; this rank's share reaches it through the gather
                pass
    elapsed = max(time.perf_counter() - started, 1e-9)
    if main:
        _summary(scorer, elapsed, torch_device, torch_dtype, group)


def _normalization(options: _Options) -> tuple[float, float]:
    """The checkpoint's reward normalisation (mean, std), or a usage error before any scoring."""
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.formats import normalization_of
    from vhctl.io.resolve import resolve_model

    folder = resolve_model(options.ckpt, revision=options.revision, token=options.token,
                           allow_pickle=options.allow_pickle).path
    found = normalization_of(Manifest.read(folder))
    if found is None:
        raise UsageError(
            f"--normalize needs a reward normalisation, and {options.ckpt} has none",
            hint="import an OpenRLHF reward model whose config has mean/std with 'vhctl wrap'",
        )
    return found


def _normalized(results: Any, normalization: tuple[float, float]) -> Iterator[dict[str, Any]]:
    """``value`` and per-token ``values`` as (x - mean) / std; rewards of a PEFT adapter are left as they are."""
    from vhctl.formats import normalize

    for result in results:
        if result.get("value") is not None:
            result["value"] = normalize(result["value"], normalization)
        if result.get("values") is not None:
            result["values"] = [None if v is None else normalize(v, normalization) for v in result["values"]]
        yield result


def _summary(scorer: Any, elapsed: float, device: Any, dtype: Any, group: Any) -> None:
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


def _local_device(options: _Options, group: Any) -> str:
    """This rank's device (``cuda:LOCAL_RANK`` for auto/cuda); a device map is refused with several per node."""
    from vhctl.scoring import distributed

    if options.device_map is not None and group.launch.local_world > 1:
        raise UsageError(
            f"--device-map spreads the model over every GPU of the node, and {group.launch.local_world} "
            "processes per node would each do that",
            hint="use one process per node with --device-map (torchrun --nproc-per-node 1), or drop it",
        )
    return distributed.local_device(options.device, group.launch)


def _score_distributed(options: _Options, launch: Any) -> None:
    """Data-parallel scoring: every rank scores its share, rank 0 writes and reports.

    An error every rank meets alike (a bad line, a set-up failure shared by :meth:`Group.agree`) is
    printed once, by rank 0, and every rank exits with its code after a barrier: a launcher stops
    all workers as soon as one fails, and rank 0 must have written its line by then.
    """
    from vhctl.errors import InputError
    from vhctl.scoring import distributed

    cuda = distributed.local_device(options.device, launch).startswith("cuda") or (
        options.device_map is not None and _cuda_available()
    )
    group = distributed.start(launch, cuda=cuda)
    if not group.is_main:
        _quiet_rank()
    try:
        _score(options, group)
    except distributed.Stopped:  # rank 0's output was closed (e.g. `| head`): a normal end
        return
    except (InputError, distributed.PeerError) as exc:
        if group.is_main:
            text, _ = describe(exc)
            if state.verbose:
                traceback.print_exc()
            error(text)
        group.barrier()
        raise typer.Exit(exc.exit_code) from None
    finally:
        group.close()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _quiet_rank() -> None:
    """Ranks other than 0 print nothing: rank 0 reports for the job (errors, warnings, summary)."""
    import logging

    state.quiet = True
    logging.getLogger("vhctl").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def is_terminal_stdin() -> bool:
    return bool(getattr(sys.stdin, "isatty", lambda: False)())


def _open_input(path: str, stack: ExitStack) -> IO[bytes]:
    """stdin (binary) for '-', else the file opened in binary mode (lines are decoded per line)."""
    if path == "-":
        return sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin  # type: ignore[return-value]
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path} not found", hint="give a file of text lines or JSONL, or '-'")
    return stack.enter_context(open(file, "rb"))


def _load(options: _Options, device: Any, dtype: Any) -> tuple[Any, Any]:
    """The checkpoint's value-head model on ``device`` (or spread by ``--device-map``) with its
    tokenizer (and its reward adapter)."""
    from transformers import AutoTokenizer

    from vhctl.checkpoint.config import quiet_transformers
    from vhctl.io.resolve import resolve_model
    from vhctl.modeling import load_checkpoint

    ckpt, revision, token, allow_pickle = options.ckpt, options.revision, options.token, options.allow_pickle
    folder = resolve_model(ckpt, revision=revision, token=token, allow_pickle=allow_pickle).path
    reward = options.reward
    adapter = _reward_adapter_dir(folder, reward) if reward is not None else None  # fail before loading
    kwargs: dict[str, Any] = {
        "dtype": dtype, "allow_pickle": allow_pickle, "trust_remote_code": options.trust_remote_code,
    }  # fmt: skip
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    if options.device_map is not None:
        kwargs["device_map"] = options.device_map  # accelerate places it; the head goes where it ends
    elif device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    with quiet_transformers(), _no_progress_bars():
        model = load_checkpoint(ckpt, **kwargs)
        if device.type != "cuda" and options.device_map is None:
            model.to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(folder), trust_remote_code=options.trust_remote_code
            )
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{ckpt} has no tokenizer, and scoring needs one ({type(exc).__name__})",
                hint="save the tokenizer into the checkpoint folder (wrap copies the source's)",
            ) from exc
        if adapter is not None:
            model = _with_reward_adapter(model, *adapter)
    return model, tokenizer


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a loading bar even into pipes and logs; keep it for terminals only."""
    from transformers.utils import logging as hf_logging

    if progress_enabled() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _reward_adapter_dir(folder: Path, name: str) -> tuple[str, Path]:
    """The checkpoint's reward adapter called ``name`` ('' = the only one, or reward_adapter)."""
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.constants import ADAPTERS_DIR, MANIFEST_NAME
    from vhctl.io.files import safe_relpath

    adapters: dict[str, str] = {}
    if (folder / MANIFEST_NAME).is_file():
        manifest = Manifest.read(folder)
        adapters = {n: info.path for n, info in manifest.adapters.items() if info.role == "reward"}
    elif (folder / ADAPTERS_DIR).is_dir():
        adapters = {
            p.name: f"{ADAPTERS_DIR}/{p.name}"
            for p in sorted((folder / ADAPTERS_DIR).iterdir())
            if p.is_dir()
        }
    if not adapters:
        raise UsageError(
            f"--reward: {folder} has no reward adapter",
            hint="add one with `vhctl attach-reward-adapter CKPT ADAPTER`",
        )
    if not name:
        name = next(iter(adapters)) if len(adapters) == 1 else DEFAULT_REWARD
    if name not in adapters:
        raise UsageError(
            f"--reward: no reward adapter named {name!r} in {folder} (it has: {', '.join(sorted(adapters))})",
            hint=f"use --reward {sorted(adapters)[0]}",
        )
    return name, folder / safe_relpath(adapters[name], what="adapter path")


def _with_reward_adapter(model: Any, name: str, adapter_dir: Path) -> Any:
    """The same model, with the reward adapter loaded through PEFT next to (or as the first) adapter.

    A checkpoint's policy is usually a plain model: the adapter then becomes the PeftModel's only
    adapter, the scorer runs the policy with adapters disabled and the reward with it enabled.
    """
    import torch
    from peft import PeftModel

    from vhctl.checkpoint.adapters import read_reward_adapter

    if not adapter_dir.is_dir():
        raise AdapterError(
            f"reward adapter {name!r} is listed but {adapter_dir} is missing", hint="run vhctl validate"
        )
    _, score_state = read_reward_adapter(str(adapter_dir))
    base = model.pretrained_model
    if isinstance(base, PeftModel):
        base.load_adapter(str(adapter_dir), name, is_trainable=False)
        peft_model = base
    else:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name, is_trainable=False)
    weight = score_state["weight"]
    device = model.v_head.summary.weight.device  # where the last hidden state lands (device maps too)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in score_state)
    head.load_state_dict({k: v.to(torch.float32) for k, v in score_state.items()})
    head = head.to(device=device, dtype=getattr(base, "dtype", torch.float32)).requires_grad_(False)
    rewarded = type(model)(peft_model, score_module=head, supports_rm_adapter=True, rm_adapter_name=name)
    rewarded.v_head = model.v_head
    return rewarded.eval()


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite value is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_results(results: Any, scorer: Any, on_closed: Callable[[], None] | None = None) -> None:
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
                for key in ("value", "reward", "values"):
                    if key in result:
                        result[key] = _finite(result[key])
                out.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
                out.flush()
                if progress is not None and task is not None:
                    progress.advance(task)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop scoring, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError):
            pass
        if on_closed is not None:
            on_closed()
            for _ in results:
                pass
        raise typer.Exit(0) from None
