"""Turn known errors into one line on stderr and an exit code; ``-v`` adds the traceback.

Unknown exceptions are bugs: they propagate with their traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vhctl.cli._output import error, state
from vhctl.errors import VhctlError

F = TypeVar("F", bound=Callable[..., Any])


def _is_safetensors_io_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "SafetensorError" and "os error" in str(exc)


def _as_os_error(exc: BaseException) -> OSError:
    """safetensors reports write failures (a full disk...) as SafetensorError('... (os error 28)')."""
    match = re.search(r"os error (\d+)", str(exc))
    code = int(match.group(1)) if match else errno.EIO
    return OSError(code, os.strerror(code))


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception vhctl knows."""
    if isinstance(exc, VhctlError):
        return str(exc), exc.exit_code
    if _is_safetensors_io_error(exc):
        exc = _as_os_error(exc)
    if isinstance(exc, OSError):
        # shutil.copyfile names the source first; a write error is about the destination.
        culprit = getattr(exc, "filename2", None) if exc.errno == errno.ENOSPC else None
        culprit = culprit or getattr(exc, "filename", None)
        where = f" ({culprit})" if culprit else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device{where}; nothing was written (free some space and retry)", 1
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where} (choose a folder you can write to)", 1
        return f"{exc.strerror or exc}{where}", 1
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller --batch-size or --max-length)", 1
    raise exc


def handle_errors(func: F) -> F:
    """Decorator for command functions: known errors become one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (VhctlError, OSError, MemoryError) as exc:
            text, code = describe(exc)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except Exception as exc:
            if not _is_safetensors_io_error(exc):
                raise
            text, code = describe(exc)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
