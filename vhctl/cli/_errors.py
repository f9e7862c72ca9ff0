"""Turn known errors into one line on stderr and an exit code; ``-v`` adds the traceback.

Unknown exceptions are bugs: they propagate with their traceback.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vhctl.cli._output import error, state
from vhctl.errors import VhctlError, describe_error, is_safetensors_io_error

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Decorator for command functions: known errors become one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (VhctlError, OSError, MemoryError) as exc:
            text, code = describe_error(exc)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except Exception as exc:
            if not is_safetensors_io_error(exc):
                raise
            text, code = describe_error(exc)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
