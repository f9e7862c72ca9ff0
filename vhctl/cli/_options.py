"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "AllowPickleOpt",
    "BatchSizeOpt",
    "CkptArg",
    "CompileOpt",
    "DeviceOpt",
    "DtypeOpt",
    "ForceOpt",
    "JsonOpt",
    "MaxLengthOpt",
    "NormalizeOpt",
    "RevisionOpt",
    "RewardAdapterOpt",
    "RewardOpt",
    "TokenOpt",
    "TrustRemoteCodeOpt",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Write a JSON report to stdout.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace DIR if it exists (only once the new one is complete).")
]
AllowPickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow reading pickle weights (with weights_only=True).")
]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Run the model's own Python code (auto_map); only for models you trust."
    ),
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", metavar="REV", help="Hub revision (branch, tag or commit) to pin.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help="Hub token (default: HF_TOKEN or the HF login); never printed.",
        show_default=False,
    ),
]
CkptArg = Annotated[
    Path, typer.Argument(help="A vhctl checkpoint folder.", show_default=False, metavar="CKPT")
]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", metavar="DTYPE", help="auto, float32, bfloat16 or float16 (or fp32, bf16, fp16)."
    ),
]
RewardOpt = Annotated[
    bool,
    typer.Option(
        "--reward", help="Score with the checkpoint's reward adapter too (its only one, or reward_adapter)."
    ),
]
RewardAdapterOpt = Annotated[
    str | None,
    typer.Option(
        "--reward-adapter",
        metavar="NAME",
        show_default=False,
        help="Score with the reward adapter NAME too (instead of --reward).",
    ),
]
NormalizeOpt = Annotated[
    bool,
    typer.Option(
        "--normalize",
        help="Write (value - mean) / std with the reward normalisation the checkpoint carries "
        "(an imported OpenRLHF reward model's mean/std).",
    ),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, metavar="N", help="Sequences per forward pass.")
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        min=1,
        metavar="N",
        show_default=False,
        help="Keep the last N tokens of longer inputs (default: the model's limit).",
    ),
]
CompileOpt = Annotated[
    str,
    typer.Option(
        "--compile",
        metavar="auto|on|off",
        help="Run the model's layers compiled with torch.compile: a compile of 20 to 30 s on a CPU first "
        "(kept on disk for the next job). auto: only where a measured speed-up pays for it (not on a CPU, "
        "where the measured speed-up was within run-to-run noise).",
    ),
]
PrefixCacheOpt = Annotated[
    int,
    typer.Option(
        "--prefix-cache-mb",
        min=0,
        metavar="MIB",
        help="Keep the keys/values of recently scored token prefixes, up to MIB (least recently used "
        "out), so a prompt is computed once however its records arrive; 0: off.",
    ),
]
