"""``vhctl make-ref``: write a frozen reference checkpoint that shares its first layers with the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, ForceOpt, JsonOpt
from vhctl.cli._output import Reporter


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@handle_errors
def make_ref(
    ckpt: CkptArg,
    shared: Annotated[
        int | None, typer.Option("--shared", help="Share the embeddings and the first N layers with the policy.")
    ] = None,
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="Layer naming when not detected, e.g. 'model.layers.{layer}'.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Reference folder (default CKPT/ref).")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write a frozen reference model of CKPT (default CKPT/ref)."""
    from vhctl.ops.make_ref import make_reference

    result = make_reference(ckpt, num_shared_layers=shared, pattern=pattern, out=out, force=force)
    sharing = (
        f"sharing {result.num_shared_layers} layers ({result.shared_tensors} tensors, {_mib(result.shared_bytes)}) "
        if result.num_shared_layers is not None else "a full copy "
    )  # fmt: skip
    Reporter(json_output=json_).done(
        result, f"reference {sharing}stored {_mib(result.stored_bytes)} -> {result.out}",
        hint=f"vhctl validate {result.policy}",
    )  # fmt: skip
