"""The Hugging Face Hub: finding models by id (through the HF cache) and pushing checkpoints.

Loading goes through ``huggingface_hub.snapshot_download``, so a model downloaded once is reused
from the cache and works offline (``HF_HUB_OFFLINE=1``). Only safe file types are fetched:
configs, safetensors, tokenizer files; pickles only when the caller allows them, code never.

Pushing validates the checkpoint, writes a model card (``README.md``) and uploads every file the
manifest lists in one commit, deleting files an earlier push left that the checkpoint no longer has.

``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read when a function is
called (huggingface_hub reads them once, at import), so a long-lived process that changes them is
honoured. The token comes from the ``token`` argument, else ``HF_TOKEN`` or the saved HF login; it
is never printed, logged or written anywhere.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhctl._version import __version__
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ARCH_SEQ2SEQ,
    CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    TINY_MODEL_NAME,
    TOKENIZER_FILES,
)
from vhctl.errors import (
    AuthError,
    CheckpointError,
    HubError,
    NotAModelError,
    OfflineError,
    SourceNotFoundError,
    UnsafeLoadError,
    UsageError,
    VhctlError,
)

if TYPE_CHECKING:
    from vhctl.checkpoint.manifest import Manifest

__all__ = [
    "PICKLE_PATTERNS",
    "SAFE_PATTERNS",
    "PushResult",
    "ResolvedModel",
    "model_card",
    "push_checkpoint",
    "resolve_model",
    "resolve_model_dir",
]

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

CARD_MARKER = "<!-- vhctl:model-card -->"
CARD_TAGS = ("vhctl", "value-head", "rlhf")

_TRUE = {"1", "on", "yes", "true"}
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")

Progress = Callable[[str], None]


# -- settings read when called ----------------------------------------------------------------
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
    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids network access."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


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


# -- loading ----------------------------------------------------------------------------------
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


def resolve_model_dir(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | tuple[str, ...] | None = None,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
) -> Path:
    """A local folder for a model name: the tiny model, an existing folder, or a hub snapshot.

    Args:
        name_or_path: ``vhctl:tiny``, a folder, or a hub id (``namespace/name``).
        revision: branch, tag or commit of a hub id (ignored for folders).
        token: hub token; default ``HF_TOKEN`` or the saved login.
        allow_patterns: the files to fetch; default :data:`SAFE_PATTERNS`.
        allow_pickle: also fetch ``*.bin`` pickles (read later with ``weights_only=True``).
        cache_dir, local_files_only, force_download, endpoint: as in ``snapshot_download``.

    Returns:
        The folder (for a hub id, the snapshot folder inside the HF cache).

    Raises:
        SourceNotFoundError: no such folder, repo or revision.
        OfflineError: not cached and the hub cannot be reached (or ``HF_HUB_OFFLINE=1``).
        AuthError: the repo is private or gated and the token cannot read it.
        UnsafeLoadError: the repo holds only pickle weights and ``allow_pickle`` is off.
    """
    return resolve_model(
        name_or_path,
        revision=revision,
        token=token,
        allow_patterns=allow_patterns,
        allow_pickle=allow_pickle,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
        endpoint=endpoint,
    ).path


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | tuple[str, ...] | None = None,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
) -> ResolvedModel:
    """Like :func:`resolve_model_dir`, also saying where the folder came from (for manifests)."""
    name = os.fspath(name_or_path)
    if name == TINY_MODEL_NAME:
        from vhctl._tiny import tiny_model_path

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
    token: str | bool | None,
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
    status = _status(exc)
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
    if isinstance(exc, _transport_errors()):
        return OfflineError(
            f"cannot reach the hub at {endpoint} to download {what}: {exc}",
            hint="check the network, HF_ENDPOINT and proxy settings",
        )
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the hub at {endpoint} failed to serve {what}: {_server_message(exc)}")
    if isinstance(exc, OSError):
        return HubError(f"could not download {what}: {exc}")
    return exc


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures, whichever HTTP library this huggingface_hub uses (httpx2, or httpx in 1.x)."""
    import importlib

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _server_message(exc: BaseException) -> str:
    status = _status(exc)
    message = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
    return f"{status} {message}" if status else message


# -- model card -------------------------------------------------------------------------------
def model_card(folder: str | os.PathLike[str], *, repo_id: str | None = None) -> str:
    """The model card (``README.md``) for a checkpoint, from its manifest and config.

    The text depends only on the checkpoint (and ``repo_id``), so pushing an unchanged checkpoint
    uploads an identical card and makes no commit.

    Args:
        folder: the checkpoint.
        repo_id: the hub id used in the usage examples (default: the folder name).
    """
    from vhctl.checkpoint.manifest import Manifest

    root = Path(folder)
    manifest = Manifest.read(root)
    config = _read_json(root / CONFIG_NAME)
    name = repo_id or root.resolve().name
    return _front_matter(manifest, repo_id) + _card_body(root, manifest, config, name)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _base_repo(manifest: Manifest, repo_id: str | None) -> str | None:
    """The base model's hub id when the manifest records one (not a local path or the tiny model)."""
    source = manifest.base_model.get("source") if isinstance(manifest.base_model, dict) else None
    if not isinstance(source, str) or not is_repo_id(source) or source == repo_id:
        return None
    return source


def _card_tags(manifest: Manifest) -> list[str]:
    tags = list(CARD_TAGS) + [manifest.architecture]
    if manifest.model_type:
        tags.append(manifest.model_type)
    if manifest.kind == KIND_REFERENCE:
        tags.append("reference-model")
    if any(a.role == "reward" for a in manifest.adapters.values()):
        tags.append("reward-model")
    if manifest.adapters:
        tags.append("peft")
    return list(dict.fromkeys(tags))


def _front_matter(manifest: Manifest, repo_id: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="vhctl", base_model=_base_repo(manifest, repo_id), tags=_card_tags(manifest)
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _card_body(root: Path, manifest: Manifest, config: dict[str, Any], name: str) -> str:
    seq2seq = manifest.architecture == ARCH_SEQ2SEQ
    vh_class = "AutoModelForSeq2SeqLMWithValueHead" if seq2seq else "AutoModelForCausalLMWithValueHead"
    auto_class = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    base = manifest.base_model if isinstance(manifest.base_model, dict) else {}
    source, revision = base.get("source"), base.get("revision")
    has_tokenizer = any((root / f).is_file() for f in TOKENIZER_FILES)
    peft_policy = (root / ADAPTER_CONFIG_NAME).is_file() and not (root / CONFIG_NAME).is_file()
    vh = manifest.value_head
    lines: list[str] = [
        "",
        CARD_MARKER,
        "",
        f"# {name}",
        "",
    ]
    if manifest.kind == KIND_REFERENCE:
        ref = manifest.reference
        shared = ref.num_shared_layers if ref else 0
        lines += [
            f"A frozen **reference** model for RLHF ({manifest.model_type}, {manifest.architecture}), "
            "with a scalar value head, made with [vhctl](https://pypi.org/project/vhctl/).",
            "",
        ]
        if shared:
            lines += [
                f"It shares its first {shared} layers with its policy (`{ref.policy if ref else '?'}`) and stores "
                "only the tensors it does not share, so load it with vhctl next to that policy.",
                "",
            ]
    else:
        lines += [
            f"A value-head checkpoint (the critic of PPO-style RLHF) made with "
            f"[vhctl](https://pypi.org/project/vhctl/): the {manifest.model_type} base model "
            f"({manifest.architecture}) plus a scalar value head, split out in `{vh.file}`.",
            "",
        ]
    lines += [
        "## Usage",
        "",
        "With vhctl (`pip install vhctl`):",
        "",
        "```python",
        f"from vhctl import {vh_class}",
        "",
        f'model = {vh_class}.from_pretrained("{name}")',
        "lm_logits, loss, values = model(input_ids)  # values: (batch, seq)",
        "```",
        "",
        "From the command line:",
        "",
        "```bash",
        f"vhctl wrap {name} --out critic   # a local copy, this value head included",
        "vhctl info critic",
        "```",
        "",
    ]
    if manifest.kind != KIND_REFERENCE or not (manifest.reference and manifest.reference.num_shared_layers):
        if peft_policy:
            lines += [
                "The policy alone (a PEFT adapter over its base model, without the value head):",
                "",
                "```python",
                "from peft import AutoPeftModelFor" + ("Seq2SeqLM" if seq2seq else "CausalLM"),
                "",
                f'model = AutoPeftModelFor{"Seq2SeqLM" if seq2seq else "CausalLM"}.from_pretrained("{name}")',
                "```",
                "",
            ]
        else:
            lines += [
                "The base model alone, with plain transformers (without the value head):",
                "",
                "```python",
                f"from transformers import {auto_class}" + (", AutoTokenizer" if has_tokenizer else ""),
                "",
                f'model = {auto_class}.from_pretrained("{name}")',
            ]
            if has_tokenizer:
                lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{name}")')
            lines += ["```", ""]
    lines += [
        "## Value head",
        "",
        "| setting | value |",
        "|---|---|",
        f"| file | `{vh.file}` |",
        f"| hidden size | {vh.hidden_size} |",
        f"| dtype | {vh.dtype} |",
        f"| init | {vh.init} |",
    ]
    if vh.std is not None:
        lines.append(f"| std | {vh.std} |")
    lines.append(f"| dropout | {vh.dropout} |")
    if vh.seed is not None:
        lines.append(f"| seed | {vh.seed} |")
    lines += ["", "## Checkpoint", ""]
    lines.append(
        f"- kind: {manifest.kind}; architecture: {manifest.architecture}; model type: {manifest.model_type}"
    )
    if source:
        lines.append(f"- base model: `{source}`" + (f" at revision `{revision}`" if revision else ""))
    for key in (
        "num_hidden_layers",
        "n_layer",
        "num_layers",
        "hidden_size",
        "n_embd",
        "d_model",
        "vocab_size",
    ):
        if key in config:
            lines.append(f"- {key}: {config[key]}")
    if manifest.frozen:
        frozen = manifest.frozen
        lines.append(
            f"- frozen: the first {frozen.get('num_shared_layers')} layers"
            + (f" (`{frozen.get('pattern')}`)" if frozen.get("pattern") else "")
            + ", shared with the reference"
        )
    if manifest.references:
        lines += ["", "## Reference models", ""]
        for rel in manifest.references:
            lines.append(f"- `{rel}/`: a frozen reference checkpoint (its own `{MANIFEST_NAME}`)")
        lines += [
            "",
            "```python",
            "from huggingface_hub import snapshot_download",
            f"from vhctl import {vh_class}",
            "",
            f'folder = snapshot_download("{name}")',
            f'ref = {vh_class}.from_pretrained(f"{{folder}}/{manifest.references[0]}")',
            "```",
        ]
    if manifest.adapters:
        lines += ["", "## Adapters", "", "| name | type | task | role | path |", "|---|---|---|---|---|"]
        for adapter_name, info in sorted(manifest.adapters.items()):
            lines.append(
                f"| {adapter_name} | {info.peft_type or ''} | {info.task_type or ''} | {info.role} | `{info.path}/` |"
            )
    total = sum(entry.size for entry in manifest.files.values())
    lines += [
        "",
        "## Files",
        "",
        f"{len(manifest.files)} files, {format_size(total)}. `{MANIFEST_NAME}` records the size and sha256 of each; "
        f"check a download with `hf download {name} --local-dir critic && vhctl validate critic`.",
        "",
        f"Written by vhctl {manifest.vhctl_version}, checkpoint format {manifest.format} v{manifest.format_version}.",
        "",
    ]
    return "\n".join(lines)


def format_size(n: float) -> str:
    """Bytes as a short human-readable size (decimal units, as the Hub shows them)."""
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n /= 1000
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def _card_for_push(root: Path, repo_id: str) -> str:
    """The card to upload: ours, or the user's own README.md with our metadata merged in."""
    path = root / MODEL_CARD_NAME
    try:
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        existing = None
    if existing is None or CARD_MARKER in existing:
        return model_card(root, repo_id=repo_id)
    from huggingface_hub import ModelCard

    from vhctl.checkpoint.manifest import Manifest

    manifest = Manifest.read(root)
    card = ModelCard(existing, ignore_metadata_errors=True)
    card.data.library_name = "vhctl"
    tags = list(card.data.tags or [])
    card.data.tags = tags + [t for t in _card_tags(manifest) if t not in tags]
    base = _base_repo(manifest, repo_id)
    if base and not card.data.base_model:
        card.data.base_model = base
    return str(card)


# -- pushing ----------------------------------------------------------------------------------
@dataclass
class PushResult:
    """What a push did; ``commit_oid`` is None when nothing changed (or on a dry run)."""

    repo_id: str
    revision: str
    commit_oid: str | None
    pr_url: str | None
    files: list[str]
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    commit_url: str | None = None
    size: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def push_checkpoint(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    validate: bool = True,
    progress: Progress | None = None,
) -> PushResult:
    """Validate a checkpoint, write its model card and upload it to the hub in one commit.

    Args:
        folder: the checkpoint (a folder with ``vhctl.json``).
        repo_id: ``namespace/name`` (created if missing; ``private`` applies to a new repo).
        private: make a new repo private; refuse to push to an existing public repo.
        revision: the branch to push to (created from ``main`` if missing).
        message: the commit title (default: one naming the checkpoint).
        create_pr: open a pull request instead of committing to the branch.
        dry_run: validate and list what would be uploaded; no network, nothing written.
        endpoint: the hub URL (default ``HF_ENDPOINT``).
        token: default ``HF_TOKEN`` or the saved login.
        validate: check the checkpoint first (an invalid one is never uploaded).
        progress: called with one-line progress messages.

    Returns:
        A :class:`PushResult`; its ``commit_oid`` is None when the hub already had these files.

    Raises:
        CheckpointError: the checkpoint is invalid (``.problems`` lists why) or links outside itself.
        AuthError: no token, a wrong token, or one without write access.
        OfflineError: HF_HUB_OFFLINE is set or the hub cannot be reached.
        HubError: the hub refused the push for another reason.
    """
    say = progress or (lambda _msg: None)
    root = Path(folder)
    if not root.is_dir():
        raise SourceNotFoundError(
            f"no such checkpoint folder: {root}", hint="give the folder vhctl wrap wrote"
        )
    if not is_repo_id(repo_id):
        raise UsageError(f"invalid repo id {repo_id!r}", hint="use namespace/name, e.g. 'alice/gpt2-critic'")
    if validate:
        say(f"validating {root}")
        _validate(root)
    from vhctl.checkpoint.manifest import Manifest

    manifest = Manifest.read(root)
    files = _files_to_upload(root, manifest)
    if dry_run:
        sizes = _sizes(files, _card_for_push(root, repo_id).encode("utf-8"))
        return PushResult(
            repo_id=repo_id,
            revision=revision or "main",
            commit_oid=None,
            pr_url=None,
            files=sorted(sizes),
            dry_run=True,
            size=sum(sizes.values()),
            sizes=sizes,
        )
    if hub_offline():
        raise OfflineError(
            f"cannot push {root} to {repo_id}: HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE to push"
        )
    url = hub_endpoint(endpoint)
    try:
        return _push(
            root,
            repo_id,
            manifest=manifest,
            files=files,
            private=private,
            revision=revision,
            message=message,
            create_pr=create_pr,
            endpoint=url,
            token=token,
            say=say,
        )
    except (VhctlError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise _push_error(exc, repo_id, url, token) from exc


def _sizes(files: dict[str, Path], card: bytes) -> dict[str, int]:
    return {rel: path.stat().st_size for rel, path in files.items()} | {MODEL_CARD_NAME: len(card)}


def _validate(root: Path) -> None:
    from vhctl.checkpoint.validate import validate_checkpoint

    problems = validate_checkpoint(root, deep=False)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        shown = "; ".join(f"{p.file}: {p.message}" if p.file else p.message for p in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        err = CheckpointError(
            f"{root} is not a valid checkpoint, nothing was uploaded: {shown}{more}",
            hint=f"run 'vhctl validate {root}' for the full list",
        )
        err.problems = errors  # type: ignore[attr-defined]
        raise err


def _files_to_upload(root: Path, manifest: Manifest) -> dict[str, Path]:
    """Every file the manifest (and its nested references' manifests) lists, plus the manifests."""
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.io.files import safe_relpath

    real_root = root.resolve()
    out: dict[str, Path] = {}

    def add(rel: str) -> None:
        rel = safe_relpath(rel, what="file path")
        path = root / rel
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise CheckpointError(
                f"{path} links to {real}, outside the checkpoint: refusing to upload it",
                hint="replace the link with a copy of the file",
            )
        if not real.is_file():
            raise CheckpointError(
                f"{path} is listed in {MANIFEST_NAME} but is not a file", hint="run vhctl validate"
            )
        out[rel] = path

    def add_checkpoint(prefix: str, m: Manifest) -> None:
        for rel in m.files:
            add(prefix + rel)
        add(prefix + MANIFEST_NAME)

    add_checkpoint("", manifest)
    for ref in manifest.references:
        ref_rel = safe_relpath(ref, what="reference path")
        add_checkpoint(ref_rel + "/", Manifest.read(root / ref_rel))
    return out


def _write_card(root: Path, card: bytes) -> None:
    """Keep the card next to the checkpoint; a read-only folder still gets it on the hub."""
    path = root / MODEL_CARD_NAME
    tmp = path.with_name(f".{MODEL_CARD_NAME}.vhctl.tmp")
    try:
        if path.is_file() and path.read_bytes() == card:
            return
        tmp.write_bytes(card)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _push(
    root: Path,
    repo_id: str,
    *,
    manifest: Manifest,
    files: dict[str, Path],
    private: bool,
    revision: str | None,
    message: str | None,
    create_pr: bool,
    endpoint: str,
    token: str | None,
    say: Progress,
) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="vhctl", library_version=__version__)
    say(f"using {endpoint}/{repo_id}")
    repo_id = api.create_repo(
        repo_id, private=private, exist_ok=True
    ).repo_id  # a bare name gains its namespace
    if private and not api.model_info(repo_id).private:
        raise HubError(
            f"{repo_id} already exists and is public: --private does not change an existing repo",
            hint="make it private in the repo settings first, or push without --private",
        )
    target = revision or "main"
    if revision is not None and not create_pr and not _ref_exists(api, repo_id, revision):
        say(f"creating branch {revision}")
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = _card_for_push(root, repo_id).encode("utf-8")
    _write_card(root, card)
    sizes = _sizes(files, card)
    names, size = sorted(sizes), sum(sizes.values())
    parent = api.repo_info(repo_id, revision=target).sha
    stale = _stale_files(api, repo_id, parent, set(names))
    operations: list[Any] = [CommitOperationAdd(rel, str(path)) for rel, path in sorted(files.items())]
    operations.append(CommitOperationAdd(MODEL_CARD_NAME, card))
    operations += [CommitOperationDelete(path) for path in stale]
    say(f"uploading {len(names)} files ({format_size(size)}) to {repo_id}@{target} in one commit")
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=message or _default_message(manifest),
        commit_description=f"Pushed with vhctl {__version__}.",
        revision=revision,
        create_pr=create_pr,
        parent_commit=None if create_pr else parent,
    )
    changed = info.pr_url is not None if create_pr else info.oid != parent
    if create_pr and info.pr_revision:
        target = info.pr_revision
    return PushResult(
        repo_id=repo_id,
        revision=target,
        commit_oid=info.oid if changed else None,
        pr_url=info.pr_url,
        files=names,
        dry_run=False,
        deleted=stale,
        commit_url=info.commit_url if changed else None,
        size=size,
        sizes=sizes,
    )


def _default_message(manifest: Manifest) -> str:
    kind = "reference" if manifest.kind == KIND_REFERENCE else "value-head"
    return f"Upload {manifest.model_type} {kind} checkpoint with vhctl"


def _ref_exists(api: Any, repo_id: str, revision: str) -> bool:
    if _COMMIT_RE.fullmatch(revision):
        return True
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    names = {b.name for b in refs.branches} | {b.ref for b in refs.branches}
    names |= {p.ref for p in refs.pull_requests or []}
    return revision in names


def _stale_files(api: Any, repo_id: str, parent: str, keep: set[str]) -> list[str]:
    """Files an earlier vhctl push uploaded (per the hub's vhctl.json) that this checkpoint lacks.

    Anything else in the repo (files the user added by hand) is left alone.
    """
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import EntryNotFoundError

    from vhctl.checkpoint.manifest import Manifest
    from vhctl.errors import ManifestError

    remote = {
        f.path
        for f in api.list_repo_tree(repo_id, revision=parent, recursive=True)
        if isinstance(f, RepoFile)
    }
    if MANIFEST_NAME not in remote:
        return []
    owned: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="vhctl-hub-") as tmp:

        def manifest_at(prefix: str) -> Manifest | None:
            try:
                path = api.hf_hub_download(repo_id, prefix + MANIFEST_NAME, revision=parent, cache_dir=tmp)
                return Manifest.read(Path(path).parent)
            except (EntryNotFoundError, ManifestError):
                return None

        top = manifest_at("")
        if top is None:
            return []
        owned |= set(top.files) | {MANIFEST_NAME}
        for ref in top.references:
            ref_manifest = manifest_at(f"{ref}/")
            if ref_manifest is not None:
                owned |= {f"{ref}/{rel}" for rel in ref_manifest.files} | {f"{ref}/{MANIFEST_NAME}"}
    return sorted((owned & remote) - keep)


def _push_error(exc: Exception, repo_id: str, endpoint: str, token: str | None) -> Exception:
    """One clear vhctl error for whatever huggingface_hub raised while pushing."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    status = _status(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return OfflineError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE to push"
        )
    if status == 401:
        if not token and get_token() is None:
            return AuthError(
                f"pushing to {repo_id} needs a token and none was found",
                hint="pass --token, set HF_TOKEN or run `hf auth login`",
            )
        return AuthError(
            f"the hub at {endpoint} refused the token for {repo_id} (401 Unauthorized)",
            hint="check --token / HF_TOKEN, or log in again with `hf auth login`",
        )
    if status == 403:
        return AuthError(
            f"the token cannot write to {repo_id} (403 Forbidden)",
            hint="use a token with write access to this namespace",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"{repo_id} has no branch to push to: {_server_message(exc)}",
            hint="a pull request needs an existing target branch; push to it first",
        )
    if status == 404:
        return HubError(
            f"the hub at {endpoint} does not let this token write to {repo_id} (404)",
            hint="check the namespace and the token's rights",
        )
    if status == 412:
        return HubError(f"{repo_id} changed on the hub while pushing (412)", hint="run the push again")
    if isinstance(exc, _transport_errors()):
        return OfflineError(
            f"cannot reach the hub at {endpoint}: {exc}",
            hint="check the network, HF_ENDPOINT and proxy settings",
        )
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"the hub at {endpoint} refused the push to {repo_id}: {_server_message(exc)}")
    if isinstance(exc, (OSError, ValueError, RuntimeError)):
        return HubError(f"pushing to {repo_id} failed: {exc}")
    return exc
