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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import AllowPickleOpt, RevisionOpt, TokenOpt
from vhctl.cli._output import message, progress_enabled, success, warning
from vhctl.errors import AdapterError, UsageError

DEFAULT_REWARD = "reward_adapter"


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
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Write an error record for a bad line and go on.")
    ] = False,
    no_prefix_sharing: Annotated[
        bool, typer.Option("--no-prefix-sharing", help="Run every line in full, even when prompts repeat.")
    ] = False,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Score text or JSONL with CKPT's value head: one JSON object per input line on stdout."""
    from vhctl.io.records import iter_records
    from vhctl.scoring import Scorer, resolve_device, resolve_dtype

    if reward_name is not None and not reward:
        raise UsageError(f"unexpected argument {reward_name!r}", hint=f"did you mean --reward {reward_name}?")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    with ExitStack() as stack:
        stream = _open_input(input_, stack)
        adapter = (reward_name or "") if reward else None
        model, tokenizer = _load(ckpt, torch_device, torch_dtype, adapter, revision, token, allow_pickle)
        interactive = input_ == "-" and is_terminal_stdin()
        if interactive:
            message("reading lines from the terminal (Ctrl-D ends)")
        scorer = Scorer(
            model,
            tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            per_token=per_token,
            reward=reward,
            window=1 if interactive else None,
            prefix_sharing=not no_prefix_sharing,
            skip_bad=skip_bad,
        )
        started = time.perf_counter()
        _write_results(scorer.score(iter_records(stream, skip_bad=skip_bad)), scorer)
    elapsed = max(time.perf_counter() - started, 1e-9)
    stats = scorer.stats
    if stats.errors:
        warning(f"{stats.errors} bad line(s) skipped (see their error records)")
    if stats.truncated:
        warning(f"{stats.truncated} input(s) longer than {scorer.max_length} tokens kept only their end")
    shared = (
        f", {stats.shared_prompts} prompt forward(s) saved by prefix sharing" if stats.shared_prompts else ""
    )
    success(
        f"scored {stats.records} line(s), {stats.tokens} tokens in {elapsed:.1f}s "
        f"({stats.tokens / elapsed:,.0f} tokens/s on {torch_device}, {str(torch_dtype).removeprefix('torch.')}"
        f"{shared})"
    )


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


def _load(
    ckpt: str, device: Any, dtype: Any, reward: str | None, revision: str | None, token: str | None,
    allow_pickle: bool,
) -> tuple[Any, Any]:  # fmt: skip
    """The checkpoint's value-head model on ``device`` with its tokenizer (and its reward adapter)."""
    from transformers import AutoTokenizer

    from vhctl.checkpoint.load import load_checkpoint, quiet_transformers, resolve_source

    folder = resolve_source(ckpt, revision=revision, token=token, allow_pickle=allow_pickle)
    adapter = _reward_adapter_dir(folder, reward) if reward is not None else None  # fail before loading
    kwargs: dict[str, Any] = {"dtype": dtype, "allow_pickle": allow_pickle}
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    with quiet_transformers(), _no_progress_bars():
        model = load_checkpoint(ckpt, **kwargs)
        if device.type != "cuda":
            model.to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
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
    device = base.get_input_embeddings().weight.device if hasattr(base, "get_input_embeddings") else "cpu"
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


def _write_results(results: Any, scorer: Any) -> None:
    """One compact JSON object per line, flushed as it comes; a closed pipe (``| head``) ends quietly."""
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
        raise typer.Exit(0) from None
