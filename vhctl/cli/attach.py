"""``vhctl attach-reward-adapter``: store a PEFT reward adapter in a checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import AllowPickleOpt, CkptArg, JsonOpt, RevisionOpt, TokenOpt
from vhctl.cli._output import Reporter

__all__ = ["attach_reward_adapter"]


@handle_errors
def attach_reward_adapter(
    ckpt: CkptArg,
    adapter: Annotated[
        str,
        typer.Argument(
            help="Local folder or hub id of a PEFT adapter with a score head.",
            metavar="ADAPTER",
            show_default=False,
        ),
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The adapter's name: stored under adapters/NAME, scored with --reward-adapter NAME.",
        ),
    ] = "reward_adapter",
    force: Annotated[bool, typer.Option("--force", help="Replace an adapter of the same name.")] = False,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    allow_pickle: AllowPickleOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Add a PEFT reward-modeling adapter to CKPT after checking it fits the base model."""
    from vhctl.ops.attach import attach_adapter

    result = attach_adapter(
        ckpt, adapter, name=name, force=force, revision=revision, token=token, allow_pickle=allow_pickle
    )
    Reporter(json_output=json_).done(
        result,
        f"attached {adapter} as {result.path} in {ckpt}",
        hint=f"vhctl score {ckpt} --reward {name}",
    )
