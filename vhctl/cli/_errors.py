"""Turn known errors into one line on stderr and an exit code; ``-v`` adds the traceback.

Known errors are vhctl's own (:class:`~vhctl.errors.VhctlError`), OS errors, running out of memory,
and whatever the model's code raises when vhctl calls into it (transformers, the model's remote
code, torch, PEFT, accelerate): "the model failed while <doing>: <its first line>". Any other
exception, one raised by vhctl's own code, is a bug: it propagates with its traceback.
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
from vhctl.errors import ModelError, VhctlError

F = TypeVar("F", bound=Callable[..., Any])

# Packages that run a model's code (the first frame vhctl calls into decides).
_MODEL_PACKAGES = frozenset(
    {"transformers", "transformers_modules", "torch", "peft", "accelerate", "bitsandbytes"}
)
# What each command does, for "the model failed while ...".
_DOING = {
    "score": "scoring",
    "wrap": "wrapping",
    "make_ref": "making the reference",
    "export": "exporting",
    "attach_reward_adapter": "attaching the reward adapter",
    "validate": "validating",
}


def _is_safetensors_io_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "SafetensorError" and "os error" in str(exc)


def _as_os_error(exc: BaseException) -> OSError:
    """safetensors reports write failures (a full disk...) as SafetensorError('... (os error 28)')."""
    match = re.search(r"os error (\d+)", str(exc))
    code = int(match.group(1)) if match else errno.EIO
    return OSError(code, os.strerror(code))


def _package(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


def raised_in_model_code(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a call vhctl made into a model package (not out of vhctl's own code).

    The traceback is followed to vhctl's last frame; the exception is the model's when the frame
    vhctl called next belongs to one of the model packages.
    """
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    ours = [i for i, frame in enumerate(frames) if _package(frame) == "vhctl"]
    if not ours or ours[-1] + 1 >= len(frames):
        return False
    return _package(frames[ours[-1] + 1]) in _MODEL_PACKAGES


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
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is a RuntimeError
        return "out of memory (try a smaller --batch-size or --max-length)", 1
    raise exc


def _known(exc: Exception, doing: str) -> BaseException | None:
    """``exc`` as an error with a one-line message, or None for a bug in vhctl."""
    if isinstance(exc, (VhctlError, OSError, MemoryError)) or _is_safetensors_io_error(exc):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":
        return exc
    return ModelError(doing, exc) if raised_in_model_code(exc) else None


def handle_errors(func: F) -> F:
    """Decorator for command functions: known errors become one line and an exit code."""
    doing = _DOING.get(func.__name__, f"running {func.__name__.replace('_', '-')}")

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            known = _known(exc, doing)
            if known is None:
                raise
            text, code = describe(known)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
