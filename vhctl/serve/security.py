"""The API key and the listening address: where the key comes from, and whether an address is private."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from vhctl.errors import UsageError

__all__ = ["KEY_ENV", "is_loopback", "read_api_key"]

KEY_ENV = "VHCTL_API_KEY"


def read_api_key(path: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from ``--api-key-file`` (its first line), else ``VHCTL_API_KEY``, else None.

    Raises:
        UsageError: the file cannot be read, or holds no key. The message never shows the key.
    """
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --api-key-file {path}: {type(exc).__name__}") from None
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise UsageError(f"--api-key-file {path} is empty", hint="write the key on its first line")
        return key
    key = (os.environ if environ is None else environ).get(KEY_ENV, "").strip()
    return key or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
