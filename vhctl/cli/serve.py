"""``vhctl serve``: the value (or reward) model as an HTTP service for RLHF trainers.

Parses the options and hands them to :func:`vhctl.serve.server.serve`; the HTTP stack (Starlette,
uvicorn, prometheus_client) is the optional extra ``vhctl[serve]``, imported only here.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

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
from vhctl.cli._output import message, state, warning
from vhctl.constants import SERVE_PREFIX_CACHE_MB
from vhctl.errors import VhctlError

__all__ = ["EXTRA_MODULES", "serve"]

EXTRA_MODULES = ("starlette", "uvicorn", "prometheus_client")


CkptArg = Annotated[
    str,
    typer.Argument(
        metavar="CKPT",
        show_default=False,
        help="A vhctl checkpoint (folder or hub id), or a TRL checkpoint that holds its value head.",
    ),
]
HostOpt = Annotated[
    str, typer.Option("--host", metavar="HOST", help="Address to listen on (loopback only by default).")
]
PortOpt = Annotated[
    int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port (0: any free one).")
]
MaxBatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-batch-tokens",
        min=1,
        metavar="N",
        show_default=False,
        help="Padded tokens per forward pass (default: batch size x longest).",
    ),
]
MaxQueueOpt = Annotated[
    int,
    typer.Option(
        "--max-queue",
        min=1,
        metavar="N",
        help="Records that may wait for the model; past it, 503 with Retry-After.",
    ),
]
MaxBodyBytesOpt = Annotated[
    int, typer.Option("--max-body-bytes", min=1, metavar="BYTES", help="Larger request bodies get 413.")
]
ApiKeyFileOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key-file",
        metavar="FILE",
        show_default=False,
        help="Require 'Authorization: Bearer KEY' (KEY: the file's first line; or set VHCTL_API_KEY).",
    ),
]
GetRewardTokenizeOpt = Annotated[
    str,
    typer.Option(
        "--get-reward-tokenize",
        metavar="whole|apart",
        help="/get_reward: whole scores each query as OpenRLHF's own server does (tokenized whole, no "
        "special tokens added); apart scores the prompt and the rest apart, as score does prompt + response.",
    ),
]
DrainTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--drain-timeout",
        min=0,
        metavar="SECONDS",
        help="On SIGTERM/SIGINT, seconds to finish the requests in flight.",
    ),
]


@handle_errors
def serve(
    ckpt: CkptArg,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    reward: RewardOpt = False,
    reward_adapter: RewardAdapterOpt = None,
    normalize: NormalizeOpt = False,
    compile_: CompileOpt = "auto",
    prefix_cache_mb: PrefixCacheOpt = SERVE_PREFIX_CACHE_MB,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSizeOpt = 16,
    max_batch_tokens: MaxBatchTokensOpt = None,
    max_length: MaxLengthOpt = None,
    max_queue: MaxQueueOpt = 4096,
    max_body_bytes: MaxBodyBytesOpt = 16 << 20,
    api_key_file: ApiKeyFileOpt = None,
    drain_timeout: DrainTimeoutOpt = 30.0,
    get_reward_tokenize: GetRewardTokenizeOpt = "whole",
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Serve CKPT over HTTP: POST /get_reward (OpenRLHF), POST /classify and GET /v1/models (vLLM),
    POST /v1/score, GET /health, GET /metrics.

    Requests that arrive together are scored together. SIGTERM or Ctrl-C stops accepting, finishes
    the requests in flight and exits 0. See docs/serving.md.
    """
    _require_extra()
    # The model thread shares the cores with the HTTP thread: OpenMP threads that spin while they
    # wait would take the cores from it (several times slower on a busy CPU). Before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vhctl.scoring.compiled import check_compile_choice
    from vhctl.scoring.options import reward_choice
    from vhctl.serve.bodies import check_tokenize
    from vhctl.serve.security import is_loopback, read_api_key
    from vhctl.serve.server import ServeOptions, server_score_options
    from vhctl.serve.server import serve as run

    selected = reward_choice(reward, reward_adapter)
    key = read_api_key(api_key_file)
    if key is None and not is_loopback(host):
        warning(
            f"listening on {host} without an API key: anyone who can reach it can use the model "
            "(set --api-key-file or VHCTL_API_KEY)"
        )
    options = ServeOptions(
        model=server_score_options(
            ckpt,
            reward=selected,
            normalize=normalize,
            batch_size=batch_size,
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            device=device,
            dtype=dtype,
            prefix_cache_mb=prefix_cache_mb,
            compile=check_compile_choice(compile_),
            revision=revision,
            token=token,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        ),
        host=host,
        port=port,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        api_key=key,
        drain_timeout=drain_timeout,
        get_reward_tokenize=check_tokenize(get_reward_tokenize),
    )
    run(options, say=message, log=None if state.quiet else _log_line)


def _require_extra() -> None:
    """One clear line when the optional HTTP stack is missing."""
    for name in EXTRA_MODULES:
        try:
            __import__(name)
        except ImportError:
            raise VhctlError(
                f"vhctl serve needs the 'serve' extra ({name} is not installed): pip install 'vhctl[serve]'"
            ) from None


def _log_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
