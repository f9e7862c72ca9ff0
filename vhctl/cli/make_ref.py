"""``vhctl make-ref``: write a frozen reference checkpoint that shares its first layers with the policy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, ForceOpt, JsonOpt
from vhctl.cli._output import Reporter
from vhctl.errors import LayerPatternError

__all__ = ["make_ref"]

# A parameter name's part before its first number: the layers' prefix ("transformer.h" in "transformer.h.3.mlp").
_LAYER_PREFIX = re.compile(r"(.+?)\.\d+\.")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _pattern_error(exc: LayerPatternError, ckpt: Path, pattern: str | None) -> LayerPatternError:
    """The error in the CLI's terms: what the checkpoint's parameter names look like, and the --pattern
    that would match them."""
    patterns = list(
        dict.fromkeys(m.group(1) + ".{layer}" for n in exc.names if (m := _LAYER_PREFIX.match(n)))
    )
    what = (
        f"--pattern {pattern!r} matches no parameter of {ckpt}"
        if pattern
        else f"no known layer naming fits {ckpt}"
    )
    if patterns:
        example = next(n for n in exc.names if _LAYER_PREFIX.match(n))
        shown = ", ".join(repr(p) for p in patterns[:3])
        return LayerPatternError(f"{what}; its layers are named like {shown} (e.g. {example})",
                                 hint=f"pass --pattern {patterns[0]!r}")  # fmt: skip
    return LayerPatternError(f"{what}; it has no numbered layers (its parameters: {', '.join(exc.names[:4])}, ...)",
                             hint="make a full copy: leave out --shared and --pattern")  # fmt: skip


@handle_errors
def make_ref(
    ckpt: CkptArg,
    shared: Annotated[
        int | None,
        typer.Option(
            "--shared",
            metavar="N",
            show_default=False,
            help="Share the embeddings and the first N layers with the policy (default: a full copy).",
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern",
            metavar="PATTERN",
            show_default=False,
            help="The layers' parameter prefix with {layer} for the number, e.g. 'model.layers.{layer}', when it is "
            "not detected.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", metavar="DIR", show_default=False, help="The reference folder (default CKPT/ref)."
        ),
    ] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write a frozen reference model of CKPT (default CKPT/ref)."""
    from vhctl.ops.make_ref import make_reference

    try:
        result = make_reference(ckpt, num_shared_layers=shared, pattern=pattern, out=out, force=force)
    except LayerPatternError as exc:
        if not exc.names:
            raise
        raise _pattern_error(exc, ckpt, pattern) from exc
    sharing = (
        f"sharing {result.num_shared_layers} layers ({result.shared_tensors} tensors, {_mib(result.shared_bytes)}) "
        if result.num_shared_layers is not None else "a full copy "
    )  # fmt: skip
    Reporter(json_output=json_).done(
        result, f"reference {sharing}stored {_mib(result.stored_bytes)} -> {result.out}",
        hint=f"vhctl validate {result.policy}",
    )  # fmt: skip
