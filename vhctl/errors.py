"""One error hierarchy: the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

__all__ = [
    "AdapterError",
    "AuthError",
    "CheckpointError",
    "DestinationExistsError",
    "HubError",
    "InputError",
    "IntegrityError",
    "LayerPatternError",
    "ManifestError",
    "ModelError",
    "NotAModelError",
    "OfflineError",
    "PeerError",
    "SourceNotFoundError",
    "UnsafeLoadError",
    "UnsupportedModelError",
    "UsageError",
    "VhctlError",
    "describe_error",
    "first_line",
    "is_safetensors_io_error",
    "model_failures",
]


class VhctlError(Exception):
    """Base of every error vhctl raises on purpose; the message says what, where and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(VhctlError, ValueError):
    """The arguments do not make sense together (bad usage: exit 2)."""

    exit_code = 2


class SourceNotFoundError(VhctlError, FileNotFoundError):
    """A model, checkpoint or adapter could not be found locally, in the cache or on the hub."""


class NotAModelError(VhctlError, ValueError):
    """A folder exists but holds no model vhctl can use."""


class UnsupportedModelError(VhctlError, ValueError):
    """The model is of a kind vhctl cannot wrap (encoder-only, unknown architecture...)."""


class CheckpointError(VhctlError, ValueError):
    """A checkpoint is incomplete, inconsistent or corrupt."""


class ManifestError(CheckpointError):
    """vhctl.json is missing, unreadable or does not follow the format."""


class IntegrityError(CheckpointError):
    """A file or tensor does not match what the manifest or the policy says."""


class DestinationExistsError(VhctlError, FileExistsError):
    """The output folder exists and --force was not given."""


class UnsafeLoadError(VhctlError):
    """Loading would run pickle or remote code that the user did not allow."""


class AdapterError(VhctlError, ValueError):
    """A PEFT adapter is missing, malformed or made for another base model."""


class LayerPatternError(VhctlError, ValueError):
    """No layer pattern matches the model, or the layer count is out of range (bad usage: exit 2).

    ``names``: the model's parameter names when no pattern matched them (for a message that shows
    what the names look like).
    """

    exit_code = 2
    names: tuple[str, ...] = ()


class InputError(VhctlError, ValueError):
    """A line of scoring input could not be read (bad JSON, missing field, bad encoding)."""

    def __init__(self, message: str, *, line: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.line = line


class HubError(VhctlError):
    """The hub refused or could not be reached."""


class OfflineError(HubError):
    """The hub is unreachable (or HF_HUB_OFFLINE is set) and the files are not cached."""


class AuthError(HubError):
    """The token is missing, wrong or lacks the rights for this repo."""


class PeerError(VhctlError):
    """An error another rank of a data-parallel run raised, re-raised so every rank stops alike."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServerError(VhctlError):
    """A vhctl server (``vhctl serve``) refused a request or could not be reached; ``status`` is the
    HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ModelError(VhctlError):
    """Code inside the model (transformers, the model's own code, torch) failed while vhctl ran it.

    The message says what vhctl was doing and gives the first line of the model's exception, which
    is kept as ``__cause__`` (``-v`` prints its traceback).
    """

    def __init__(self, doing: str, cause: BaseException) -> None:
        super().__init__(
            f"the model failed while {doing}: {first_line(cause)}", hint="run with -v for the traceback"
        )
        self.doing = doing


def first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (with the next line when the first one ends with a colon)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def model_failures(doing: str) -> Iterator[None]:
    """Raise what the model's code raises inside the block as a :class:`ModelError` (also a decorator).

    vhctl's own errors, OS errors and running out of memory keep their own messages.
    """
    try:
        yield
    except (VhctlError, OSError, MemoryError):
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch's (a RuntimeError): the usual advice applies
            raise MemoryError(first_line(exc)) from exc
        raise ModelError(doing, exc) from exc


def is_safetensors_io_error(exc: BaseException) -> bool:
    """safetensors reports I/O failures as its own error type, with the OS error number in the text."""
    return type(exc).__name__ == "SafetensorError" and "os error" in str(exc)


def _as_os_error(exc: BaseException) -> OSError:
    """safetensors reports write failures (a full disk...) as SafetensorError('... (os error 28)')."""
    match = re.search(r"os error (\d+)", str(exc))
    code = int(match.group(1)) if match else errno.EIO
    return OSError(code, os.strerror(code))


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception vhctl knows (anything else is re-raised: a bug)."""
    if isinstance(exc, VhctlError):
        return str(exc), exc.exit_code
    if is_safetensors_io_error(exc):
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
