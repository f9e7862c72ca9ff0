"""Turn a model name into a local folder: ``vhctl:tiny``, a folder, or a hub id through the HF cache.

Loading goes through ``huggingface_hub.snapshot_download``, so a model downloaded once is reused
from the cache and works offline (``HF_HUB_OFFLINE=1``). Only safe file types are fetched:
configs, safetensors, tokenizer files; pickles only when the caller allows them, code never. The
token comes from the ``token`` argument, else ``HF_TOKEN`` or the saved HF login; it is never
printed, logged or written anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vhctl._tiny import tiny_model_path
from vhctl._version import __version__
from vhctl.constants import TINY_MODEL_NAME
from vhctl.errors import (
    AuthError,
    HubError,
    NotAModelError,
    OfflineError,
    SourceNotFoundError,
    UnsafeLoadError,
)
from vhctl.io.hub import (
    HubToken,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    is_repo_id,
    server_message,
    status_of,
    transport_errors,
)

__all__ = ["PICKLE_PATTERNS", "SAFE_PATTERNS", "ResolvedModel", "resolve_model"]

# What a hub snapshot may bring in by default: configs, safetensors weights, tokenizer files and
# chat templates. Never code (*.py); pickles (*.bin) only when the caller allows them.
SAFE_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.jinja",
    "*.tiktoken",
)
PICKLE_PATTERNS = ("*.bin",)

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name led: ``origin`` is ``tiny``, ``local`` or ``hub``.

    For the hub, ``source`` is the repo id, ``revision`` what was asked (default ``main``) and
    ``commit`` the commit the snapshot holds, to record in a manifest.
    """

    path: Path
    origin: str
    source: str
    revision: str | None = None
    commit: str | None = None


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: HubToken = None,
    allow_patterns: list[str] | tuple[str, ...] | None = None,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
) -> ResolvedModel:
    """Where a model name leads: the tiny model, an existing folder, or a snapshot in the HF cache.

    The one place vhctl turns a name into a folder; ``origin``/``commit`` are kept for manifests.

    Args:
        name_or_path: ``vhctl:tiny``, a folder, or a hub id (``namespace/name``).
        revision: branch, tag or commit of a hub id (ignored for folders).
        token: hub token; default ``HF_TOKEN`` or the saved login.
        allow_patterns: the files to fetch; default :data:`SAFE_PATTERNS`.
        allow_pickle: also fetch ``*.bin`` pickles (read later with ``weights_only=True``).
        cache_dir, local_files_only, force_download, endpoint: as in ``snapshot_download``.

    Returns:
        A :class:`ResolvedModel`; for a hub id its ``path`` is the snapshot folder in the HF cache.

    Raises:
        SourceNotFoundError: no such folder, repo or revision.
        OfflineError: not cached and the hub cannot be reached (or ``HF_HUB_OFFLINE=1``).
        AuthError: the repo is private or gated and the token cannot read it.
        UnsafeLoadError: the repo holds only pickle weights and ``allow_pickle`` is off.
    """
    name = os.fspath(name_or_path)
    if name == TINY_MODEL_NAME:
        return ResolvedModel(path=tiny_model_path(), origin="tiny", source=TINY_MODEL_NAME)
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(path=path, origin="local", source=name)
    if path.exists():
        raise NotAModelError(
            f"{name} is a file, not a model folder", hint="point at the folder that holds it"
        )
    if isinstance(name_or_path, os.PathLike) or not is_repo_id(name):
        raise SourceNotFoundError(
            f"no such folder: {name}",
            hint=f"give an existing folder, a hub id such as 'openai-community/gpt2', or '{TINY_MODEL_NAME}'",
        )
    return _download(
        name,
        revision=revision,
        token=token,
        patterns=list(allow_patterns or SAFE_PATTERNS) + (list(PICKLE_PATTERNS) if allow_pickle else []),
        allow_pickle=allow_pickle,
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else hub_cache_dir(),
        local_files_only=local_files_only,
        force_download=force_download,
        endpoint=hub_endpoint(endpoint),
    )


def _download(
    repo_id: str,
    *,
    revision: str | None,
    token: HubToken,
    patterns: list[str],
    allow_pickle: bool,
    cache_dir: str,
    local_files_only: bool,
    force_download: bool,
    endpoint: str,
) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            endpoint=endpoint,
            allow_patterns=patterns,
            local_files_only=local_files_only or offline,
            force_download=force_download,
            library_name="vhctl",
            library_version=__version__,
        )
    except Exception as exc:
        raise _download_error(exc, repo_id, revision, endpoint, offline, local_files_only) from exc
    path = Path(folder)
    if not allow_pickle:
        _refuse_pickle_only(repo_id, path, cache_dir)
    commit = path.name if _COMMIT_RE.fullmatch(path.name) else None
    return ResolvedModel(path=path, origin="hub", source=repo_id, revision=revision or "main", commit=commit)


def _refuse_pickle_only(repo_id: str, folder: Path, cache_dir: str) -> None:
    """A repo with only ``*.bin`` weights arrives without weights: say why instead of "no weights"."""
    if any(folder.rglob("*.safetensors")):
        return
    from huggingface_hub import get_cached_repo_tree

    try:
        tree = get_cached_repo_tree(repo_id, revision=folder.name, cache_dir=cache_dir)
    except Exception:  # no cached listing: nothing more to say
        return
    pickles = sorted(f.path for f in tree if f.path.endswith(".bin"))
    if pickles:
        raise UnsafeLoadError(
            f"{repo_id} holds only pickle weights ({', '.join(pickles[:3])}), which vhctl does not load by default",
            hint="pass --allow-pickle (allow_pickle=True) to read them with torch.load(weights_only=True)",
        )


def _download_error(
    exc: Exception, repo_id: str, revision: str | None, endpoint: str, offline: bool, local_only: bool
) -> Exception:
    """One clear vhctl error for whatever snapshot_download raised."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo_id}@{revision}" if revision else repo_id
    status = status_of(exc)
    if isinstance(exc, GatedRepoError):
        return AuthError(
            f"{repo_id} is gated on {endpoint}: your token has no access to it",
            hint="accept its terms on the hub and log in (`hf auth login` or HF_TOKEN)",
        )
    if isinstance(exc, RevisionNotFoundError):
        return SourceNotFoundError(
            f"{repo_id} has no revision {revision!r} on {endpoint}", hint="check the branch, tag or commit"
        )
    if status == 401 and not isinstance(exc, RepositoryNotFoundError):
        return AuthError(
            f"the hub at {endpoint} refused the token while reading {repo_id} (401)",
            hint="check HF_TOKEN / --token or log in again with `hf auth login`",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return SourceNotFoundError(
            f"no local folder {repo_id} and no model {repo_id} on {endpoint}",
            hint="check the id; if the repo is private, log in (`hf auth login`) or set HF_TOKEN",
        )
    if isinstance(exc, LocalEntryNotFoundError):
        if offline or local_only:
            why = "HF_HUB_OFFLINE=1" if offline else "local_files_only=True"
            return OfflineError(
                f"{what} is not in the Hugging Face cache and {why} forbids downloading it",
                hint=f"set HF_HUB_OFFLINE=0 or download it first (`hf download {repo_id}`)",
            )
        return OfflineError(
            f"cannot download {what} from {endpoint}, and it is not in the Hugging Face cache",
            hint="check the network, HF_ENDPOINT and proxy settings, or download it first",
        )
    if isinstance(exc, transport_errors()):
        return OfflineError(
            f"cannot reach the hub at {endpoint} to download {what}: {exc}",
            hint="check the network, HF_ENDPOINT and proxy settings",
        )
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the hub at {endpoint} failed to serve {what}: {server_message(exc)}")
    if isinstance(exc, OSError):
        return HubError(f"could not download {what}: {exc}")
    return exc
