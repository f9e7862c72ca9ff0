"""``vhctl wrap``: make a vhctl checkpoint from a base model or a TRL-style checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import AllowPickleOpt, ForceOpt, JsonOpt, RevisionOpt, TokenOpt, TrustRemoteCodeOpt
from vhctl.cli._output import Reporter
from vhctl.constants import ADAPTER_CONFIG_NAME

__all__ = [
    "DropoutOpt",
    "DtypeOpt",
    "InitFromRewardOpt",
    "InitOpt",
    "LinkOpt",
    "ModelArg",
    "OutOpt",
    "SeedOpt",
    "StdOpt",
    "VerifyOpt",
    "wrap",
]

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Hub id, local folder, vhctl:tiny, or a TRL (also TRL's PEFT layout), OpenRLHF, seqcls or "
        "DeepSpeed-Chat checkpoint.",
        metavar="MODEL",
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option("--out", "-o", metavar="DIR", help="The checkpoint folder to write.", show_default=False),
]
InitOpt = Annotated[
    str | None,
    typer.Option(
        "--init",
        metavar="random|normal",
        show_default=False,
        help="A new head's init: random (PyTorch's Linear init, the default) or normal (N(0, STD), zero bias).",
    ),
]
StdOpt = Annotated[
    float | None,
    typer.Option("--std", metavar="STD", show_default=False, help="Std of the normal init (default 0.2)."),
]
DropoutOpt = Annotated[
    float | None,
    typer.Option(
        "--dropout",
        metavar="P",
        show_default=False,
        help="The head's dropout (default 0.1; a config's summary_dropout_prob wins).",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed", metavar="N", show_default=False, help="The same seed gives byte-identical head files."
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        show_default=False,
        help="Convert the base weights: float32, bfloat16 or float16 (or fp32, bf16, fp16).",
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Hash weight files from the Hugging Face cache too (their blob names are taken as their "
        "sha256 otherwise) and refuse a corrupt blob.",
    ),
]
LinkOpt = Annotated[bool, typer.Option("--link", help="Hard-link unchanged base files instead of copying.")]
InitFromRewardOpt = Annotated[
    str | None,
    typer.Option(
        "--init-from-reward",
        metavar="RM",
        help="Start the value head from this reward model's score head (seqcls, OpenRLHF, DeepSpeed-Chat, "
        "PEFT reward adapter); hidden sizes must match.",
    ),
]


@handle_errors
def wrap(
    model: ModelArg,
    out: OutOpt,
    init: InitOpt = None,
    std: StdOpt = None,
    dropout: DropoutOpt = None,
    seed: SeedOpt = None,
    revision: RevisionOpt = None,
    dtype: DtypeOpt = None,
    link: LinkOpt = False,
    verify: VerifyOpt = False,
    force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    init_from_reward: InitFromRewardOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Wrap MODEL with a value head and write a vhctl checkpoint to --out."""
    from vhctl.ops.wrap import wrap_model

    result = wrap_model(
        model,
        out,
        init=init,
        std=std,
        dropout=dropout,
        seed=seed,
        revision=revision,
        dtype=dtype,
        force=force,
        link=link,
        token=token,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        init_from_reward=init_from_reward,
        verify=verify,
    )
    kept = (
        f", head kept from {result.head_from} layout"
        if result.head_from
        else f", head init {result.head_init}"
    )
    peft_policy = ADAPTER_CONFIG_NAME in result.files  # its base is frozen: no reference to make
    Reporter(json_output=json_).done(
        result,
        f"wrapped {result.source} ({result.model_type}, {result.architecture}{kept}) -> {result.out}",
        hint=f"vhctl score {result.out}" if peft_policy else f"vhctl make-ref {result.out} --shared N",
        notes=result.notes,
    )
