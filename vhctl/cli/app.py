"""The Typer application: global options and command registration.

Command modules import torch/transformers inside their functions, so ``vhctl --help``,
``--version`` and shell completion stay fast.
"""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from vhctl._version import __version__
from vhctl.cli import attach, export, info, make_ref, push, score, validate, wrap
from vhctl.cli._output import state

app = typer.Typer(
    name="vhctl",
    help="Build, check, score and share value-head checkpoints for RLHF.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vhctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Show tracebacks of errors.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
) -> None:
    """Build, check, score and share value-head checkpoints for RLHF."""
    state.verbose = verbose
    state.quiet = quiet


app.command("wrap")(wrap.wrap)
app.command("attach-reward-adapter")(attach.attach_reward_adapter)
app.command("make-ref")(make_ref.make_ref)
app.command("score")(score.score)
app.command("validate")(validate.validate)
app.command("info")(info.info)
app.command("push")(push.push)
app.command("export")(export.export)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="vhctl")
    finally:
        # The process ends here: spare its exit a collection of everything torch and transformers
        # imported (over a second after transformers' modeling code), which would free nothing.
        gc.freeze()
