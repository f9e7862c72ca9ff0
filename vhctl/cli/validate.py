"""``vhctl validate``: check checkpoints for CI; every problem listed, exit 1 if any is an error."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import JsonOpt
from vhctl.cli._output import Reporter, emit_json, emit_table, error, success
from vhctl.errors import UsageError, VhctlError

if TYPE_CHECKING:
    from vhctl.checkpoint.validate import Validation

__all__ = [
    "CkptsArg",
    "FormatOpt",
    "FromManifestsOpt",
    "ReportFormat",
    "validate",
]


class ReportFormat(str, Enum):
    """What ``--format`` writes to stdout."""

    text = "text"
    json = "json"
    github = "github"
    junit = "junit"


CkptsArg = Annotated[
    list[Path],
    typer.Argument(
        help="vhctl checkpoint folders; each is checked and reported (several: exit 1 if any has an error).",
        show_default=False,
        metavar="CKPT",
    ),
]
FormatOpt = Annotated[
    ReportFormat | None,
    typer.Option(
        "--format",
        metavar="text|json|github|junit",
        case_sensitive=False,
        show_default=False,
        help="text (default: a table), json (same as --json), github (workflow-command annotations) "
        "or junit (JUnit XML).",
    ),
]
FromManifestsOpt = Annotated[
    bool,
    typer.Option(
        "--from-manifests",
        help="The arguments are files inside checkpoints (vhctl.json, as pre-commit passes them): "
        "validate the folders they are in.",
    ),
]


@handle_errors
def validate(
    ckpts: CkptsArg,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also read every tensor and check all values are finite.")
    ] = False,
    json_: JsonOpt = False,
    format_: FormatOpt = None,
    from_manifests: FromManifestsOpt = False,
) -> None:
    """Check files, hashes, shapes, head, reference and adapters of each CKPT."""
    from vhctl.checkpoint.validate import run_checks
    from vhctl.io.files import existing_folder

    fmt = _report_format(json_, format_)
    folders = _folders(ckpts, from_manifests)
    try:  # every path is checked before any is validated: one clear message
        for folder in folders:
            existing_folder(folder, hint="pass the folder of a vhctl checkpoint")
    except VhctlError as exc:
        if fmt is ReportFormat.github:  # also an annotation, so the job's summary says why
            _write_annotation(str(exc))
        raise
    validations = [run_checks(folder, deep=deep) for folder in folders]
    failed = [v.path for v in validations if not v.ok]

    def show() -> None:  # the report in the format asked for (validate's own documents), then a line each
        _write_report(fmt, validations)
        for v in validations:
            _status_line(v)

    everything = f"all {len(validations)} checkpoints are valid" + (" (deep)" if deep else "")
    Reporter().done(None, everything if len(validations) > 1 and not failed else None, human=show)
    if failed:
        if len(validations) > 1:
            error(f"{len(failed)} of {len(validations)} checkpoints have errors: {', '.join(failed)}")
        raise typer.Exit(1)


def _report_format(json_: bool, format_: ReportFormat | None) -> ReportFormat:
    """``--json`` is ``--format json``; both with different formats is a usage error (exit 2)."""
    if json_ and format_ is not None and format_ is not ReportFormat.json:
        raise UsageError(f"--json and --format {format_.value} ask for two formats", hint="give one of them")
    if json_:
        return ReportFormat.json
    return format_ or ReportFormat.text


def _folders(paths: list[Path], from_manifests: bool) -> list[Path]:
    """The folders to validate, each once, in the order given (a file stands for its folder
    with ``--from-manifests``)."""
    seen: set[Path] = set()
    out: list[Path] = []
    for path in paths:
        folder = path.parent if from_manifests and path.is_file() else path
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            out.append(folder)
    return out


def _write_report(fmt: ReportFormat, validations: list[Validation]) -> None:
    from vhctl.checkpoint.validate.report import github_commands, json_report, junit_xml

    if fmt is ReportFormat.json:
        emit_json(json_report(validations))
    elif fmt is ReportFormat.github:
        sys.stdout.write(github_commands(validations))
        sys.stdout.flush()
    elif fmt is ReportFormat.junit:
        sys.stdout.write(junit_xml(validations))
        sys.stdout.flush()
    else:
        for v in validations:
            if v.problems:
                emit_table(
                    f"problems in {v.path}",
                    ("severity", "code", "file", "message"),
                    ((p.severity, p.code, p.file or "-", p.message) for p in v.problems),
                )


def _write_annotation(message: str) -> None:
    from vhctl.checkpoint.validate.report import escape_data

    sys.stdout.write(f"::error title=vhctl validate::{escape_data(message)}\n")
    sys.stdout.flush()


def _status_line(v: Validation) -> None:
    """One line on stderr per checkpoint: valid (with its warnings), or its counts."""
    from vhctl.checkpoint.validate.report import counts

    errors, warnings = counts(v)
    if not v.ok:
        error(f"{v.path}: {errors} error(s), {warnings} warning(s)")
    else:
        success(
            f"{v.path} is valid"
            + (f" ({warnings} warning(s))" if warnings else "")
            + (" (deep)" if v.deep else "")
        )
