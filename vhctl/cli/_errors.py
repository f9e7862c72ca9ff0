"""Turn known errors into one line on stderr and an exit code; ``-v`` adds the traceback.

An exception raised inside the model's code (transformers, the model's own code, torch) is the
model's failure, not vhctl's: one line says what failed. Any other unknown exception is a bug in
vhctl: it propagates with its traceback.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vhctl.cli._output import error, silence_stdout, state
from vhctl.errors import ModelError, VhctlError, describe_error, is_safetensors_io_error

__all__ = ["handle_errors", "raised_in_model_code"]

F = TypeVar("F", bound=Callable[..., Any])

# Packages that run a model's code (the first frame vhctl calls into decides).
_MODEL_PACKAGES = frozenset(
    {"transformers", "transformers_modules", "torch", "peft", "accelerate", "bitsandbytes"}
)
# What each command does, for "the model failed while ...".
_DOING = {
    "score": "scoring",
    "serve": "serving",
    "wrap": "wrapping",
    "make_ref": "making the reference",
    "export": "exporting",
    "attach_reward_adapter": "attaching the reward adapter",
    "validate": "validating",
}


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


def _known(exc: Exception, doing: str) -> BaseException | None:
    """``exc`` as an error with a one-line message, or None for a bug in vhctl."""
    if isinstance(exc, (VhctlError, OSError, MemoryError)) or is_safetensors_io_error(exc):
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
        except BrokenPipeError:
            # The reader of stdout went away (`vhctl info CKPT | head`): stop quietly, as `score` does.
            silence_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:
            known = _known(exc, doing)
            if known is None:
                raise
            text, code = describe_error(known)
            if state.verbose:
                traceback.print_exc()
            error(text)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
