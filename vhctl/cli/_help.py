"""Help pages that read like the ``gh`` and ``hf`` CLIs: ``vhctl score [OPTIONS] CKPT``, ``CKPT  help``.

Typer 0.29 writes a required argument as ``{CKPT}`` in the usage line and adds its Python type
(``CKPT <str>``) in the argument list, whatever its metavar. :class:`Command` (passed as ``cls=``
when a command is registered) writes the usage line from the metavars alone, followed by the
options that are required (``--out DIR``), and lists arguments by name and help only. Options keep
Typer's rendering: each non-flag option names its value with an upper-case metavar.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

__all__ = ["Command"]


def _argument_name(param: Any) -> str:
    name = param.metavar or str(param.name).upper()
    return name + ("..." if param.nargs != 1 else "")


class Command(TyperCommand):
    """A command whose usage line and argument list show only upper-case names (no braces, no types)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument" or getattr(param, "hidden", False):
                continue
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
        for param in self.get_params(ctx):
            if param.param_type_name == "option" and param.required and param.opts:
                pieces.append(f"{max(param.opts, key=len)} {param.metavar or 'VALUE'}")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [
            (_argument_name(param), getattr(param, "help", None) or "")  # Typer arguments carry help
            for param in self.get_params(ctx)
            if param.param_type_name == "argument" and not getattr(param, "hidden", False)
        ]
        options = [
            record
            for param in self.get_params(ctx)
            if param.param_type_name == "option" and (record := param.get_help_record(ctx)) is not None
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)
