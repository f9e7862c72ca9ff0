"""The Typer application: global options and command registration.

Command modules import torch/transformers inside their functions, so ``vhctl --help``,
``--version`` and shell completion stay fast.
"""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from vhctl._version import __version__
from vhctl.cli import attach, export, info, make_ref, push, score, serve, validate, wrap
from vhctl.cli._help import Command
from vhctl.cli._output import state

__all__ = ["app", "main"]

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
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, show_default=False, help="Show tracebacks of errors."),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
) -> None:
    """Build, check, score and share value-head checkpoints for RLHF."""
    state.verbose = verbose
    state.quiet = quiet


# (name, function, the one line `vhctl --help` lists it with)
_COMMANDS = (
    ("wrap", wrap.wrap, "Wrap a model with a value head: a new vhctl checkpoint."),
    ("attach-reward-adapter", attach.attach_reward_adapter, "Add a PEFT reward adapter to a checkpoint."),
    ("make-ref", make_ref.make_ref, "Write a frozen reference model that shares the first layers."),
    ("score", score.score, "Score text or JSON Lines: one JSON object per line on stdout."),
    ("validate", validate.validate, "Check checkpoints: files, hashes, shapes, head, references, adapters."),
    ("info", info.info, "Show what a checkpoint holds (nothing is loaded)."),
    ("push", push.push, "Validate a checkpoint and upload it to the Hugging Face Hub."),
    ("export", export.export, "Export a checkpoint for TRL, OpenRLHF or transformers/vLLM."),
    ("serve", serve.serve, "Serve a checkpoint's values or rewards over HTTP (OpenRLHF's /get_reward)."),
)
for _name, _function, _short in _COMMANDS:
    app.command(_name, cls=Command, short_help=_short)(_function)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="vhctl")
    finally:
        # The process ends here: spare its exit a collection of everything torch and transformers
        # imported (over a second after transformers' modeling code), which would free nothing.
        gc.freeze()
