"""``vhctl validate``: check a checkpoint for CI; every problem listed, exit 1 if any is an error."""

from __future__ import annotations

from typing import Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, JsonOpt
from vhctl.cli._output import emit_json, emit_table, error, success


@handle_errors
def validate(
    ckpt: CkptArg,
    deep: Annotated[bool, typer.Option("--deep", help="Also read every tensor and check all values are finite.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Check files, hashes, shapes, head, reference and adapters of CKPT."""
    from vhctl.checkpoint.validate import has_errors, validate_checkpoint

    problems = validate_checkpoint(ckpt, deep=deep)
    failed = has_errors(problems)
    if json_:
        emit_json({
            "checkpoint": str(ckpt), "deep": deep, "ok": not failed,
            "problems": [p.to_dict() for p in problems],
        })
    elif problems:
        emit_table(f"problems in {ckpt}", ("severity", "code", "file", "message"),
                   ((p.severity, p.code, p.file or "-", p.message) for p in problems))
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if failed:
        error(f"{ckpt}: {errors} error(s), {warnings} warning(s)")
        raise typer.Exit(1)
    success(f"{ckpt} is valid" + (f" ({warnings} warning(s))" if warnings else "") + (" (deep)" if deep else ""))
