"""``vhctl export``: a vhctl checkpoint in the layout TRL, OpenRLHF or transformers' seqcls reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, ForceOpt, JsonOpt, RevisionOpt, TokenOpt
from vhctl.cli._output import Reporter

__all__ = ["export"]


@handle_errors
def export(
    checkpoint: CkptArg,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="trl|openrlhf|seqcls",
            help="trl: TRL <= 1.12 value-head layout; openrlhf: OpenRLHF critic/reward model; "
            "seqcls: transformers *ForSequenceClassification with num_labels=1.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="The folder to write.", show_default=False)
    ],
    force: ForceOpt = False,
    keep_shards: Annotated[
        bool,
        typer.Option(
            "--keep-shards",
            help="trl: keep the checkpoint's shards (TRL 1.12 reloads those only from the hub; "
            "default: one model.safetensors).",
        ),
    ] = False,
    bias: Annotated[
        str,
        typer.Option(
            "--bias",
            metavar="auto|norm|mean|config",
            help="openrlhf/seqcls, whose heads have no bias: auto folds a non-zero head bias into the final "
            "norm's bias where the model has one, else refuses; mean (openrlhf) folds it into the reward mean; "
            "config only records it.",
        ),
    ] = "auto",
    value_head_prefix: Annotated[
        str | None,
        typer.Option(
            "--value-head-prefix",
            metavar="NAME",
            help="openrlhf: name of the head (default score; value_head for old OpenRLHF).",
            show_default=False,
        ),
    ] = None,
    pad_token: Annotated[
        str,
        typer.Option(
            "--pad-token",
            metavar="auto|eos",
            help="seqcls: auto gives a model that pads with its EOS token a pad token of its own (so "
            "transformers and TRL score the last token, as vhctl does), refusing when the tokenizer has none; "
            "eos keeps EOS (a text ending in EOS is then scored one token early).",
        ),
    ] = "auto",
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Export CKPT for TRL, OpenRLHF or transformers/vLLM, exactly (values equal within 1e-6)."""
    from vhctl.formats import format_spec
    from vhctl.ops.export import export_checkpoint

    result = export_checkpoint(
        checkpoint,
        format_,
        out,
        force=force,
        keep_shards=keep_shards,
        bias=bias,
        value_head_prefix=value_head_prefix,
        pad_token=pad_token,
        revision=revision,
        token=token,
    )
    Reporter(json_output=json_).done(
        result,
        f"exported {result.source} ({result.model_type}, {result.architecture}) as {result.format} -> {result.out}",
        hint=format_spec(result.format).hint.format(out=result.out),
        notes=result.notes,
    )
