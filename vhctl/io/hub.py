"""Hugging Face Hub settings and error facts, read when called (never cached at import).

``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read on every call
(huggingface_hub reads them once, at its import), so a long-lived process that changes them is
honoured. Resolving ids (:mod:`vhctl.io.resolve`) and pushing (:mod:`vhctl.hub.push`) share these.
"""

from __future__ import annotations

import importlib
import os

__all__ = [
    "HubToken",
    "hub_cache_dir",
    "hub_endpoint",
    "hub_offline",
    "is_repo_id",
    "server_message",
    "status_of",
    "transport_errors",
]

# A hub token as huggingface_hub takes it: the token, True (the saved login, required), False (none)
# or None (``HF_TOKEN`` or the saved login, when there is one).
HubToken = str | bool | None

_TRUE = {"1", "on", "yes", "true"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub URL: ``endpoint``, else ``HF_ENDPOINT``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> str:
    """The HF cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.path.expandvars(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids network access."""
    from huggingface_hub import constants

    return (
        bool(constants.is_offline_mode()) or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    )


def is_repo_id(text: str) -> bool:
    """Whether ``text`` can be a hub repo id (``name`` or ``namespace/name``), not a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not text or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures, whichever HTTP library this huggingface_hub uses (httpx2, or httpx in 1.x)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a hub error, if it carries a response."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def server_message(exc: BaseException) -> str:
    """The hub's own words for an error, with its status."""
    status = status_of(exc)
    message = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
    return f"{status} {message}" if status else str(message)
