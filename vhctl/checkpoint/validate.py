"""Check a vhctl checkpoint without loading it, and list every problem found.

``validate_checkpoint`` is built for CI: it never stops at the first problem and never raises for a
broken checkpoint (only for a path that is not there or not a folder). Each problem carries a stable
code (see ``PROBLEM_CODES``) so scripts can match on it. By default only headers and file hashes are
read; ``deep=True`` also reads every tensor to check that all values are finite.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vhctl.checkpoint.config import auto_class_for, detect_architecture, hidden_size_of, quiet_transformers
from vhctl.checkpoint.manifest import Manifest, iter_checkpoint_files
from vhctl.checkpoint.tensors import (
    HEAD_FLOAT_NAMES,
    SafetensorsHeader,
    TensorInfo,
    iter_tensor_bytes,
    read_header,
    read_index,
    shared_tensors_sha256,
    tensor_index,
)
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_PT_NAME,
    ADAPTER_SAFE_NAME,
    ADAPTERS_DIR,
    ARCH_CAUSAL,
    ARCH_SEQ2SEQ,
    CONFIG_NAME,
    KIND_POLICY,
    KIND_REFERENCE,
    MANIFEST_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TINY_MODEL_NAME,
    V_HEAD_BIAS,
    V_HEAD_PREFIX,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, VhctlError
from vhctl.io.files import existing_folder, safe_relpath, sha256_file

ERROR = "error"
WARNING = "warning"

# code -> (severity, what it means). The table in the README is generated from the same words.
PROBLEM_CODES: dict[str, tuple[str, str]] = {
    "manifest-missing": (ERROR, "vhctl.json is not there: the folder is not a vhctl checkpoint"),
    "manifest-invalid": (
        ERROR,
        "vhctl.json is not valid JSON, does not follow the format, or has paths that escape",
    ),
    "manifest-config-mismatch": (
        ERROR,
        "the manifest's model_type or architecture disagrees with config.json",
    ),
    "file-missing": (ERROR, "a file listed in the manifest (or named by the weight index) is not there"),
    "file-unreadable": (ERROR, "a file cannot be read (permissions, I/O error)"),
    "size-mismatch": (ERROR, "a file's size differs from the manifest (truncated or replaced)"),
    "hash-mismatch": (
        ERROR,
        "a file's sha256 differs from the manifest (changed bytes or hand-edited manifest)",
    ),
    "unexpected-file": (WARNING, "a file is in the folder but not in the manifest"),
    "pickle-file": (WARNING, "a pickle file (*.bin, *.pt, *.pth, *.pkl, *.pickle) is in the folder"),
    "symlink-outside": (ERROR, "a symlink points outside the checkpoint folder"),
    "config-missing": (ERROR, "config.json is not there"),
    "config-invalid": (ERROR, "config.json is not a JSON object"),
    "config-unsupported": (
        WARNING,
        "transformers cannot build this config here, so tensors were not checked against it",
    ),
    "corrupt-header": (ERROR, "a safetensors file's header cannot be parsed or does not fit the file"),
    "index-invalid": (ERROR, "model.safetensors.index.json is unreadable or names tensors its shards lack"),
    "weights-missing": (ERROR, "no model.safetensors (or shards) holds the base model"),
    "missing-tensor": (ERROR, "a tensor the model needs is in no weight file"),
    "unexpected-tensor": (ERROR, "a weight file holds a tensor the model does not have"),
    "shape-mismatch": (ERROR, "a base tensor's shape differs from what config.json implies"),
    "dtype-mismatch": (ERROR, "a base tensor's dtype differs from config.json's dtype"),
    "head-missing": (ERROR, "value_head.safetensors or one of its two tensors is not there"),
    "head-shape": (
        ERROR,
        "the value head's tensors are not (1, hidden) and (1,), or extra tensors are present",
    ),
    "head-hidden-size": (ERROR, "the head's hidden size differs from the model's or the manifest's"),
    "head-dtype": (ERROR, "the head is not float16/bfloat16/float32/float64, or not the manifest's dtype"),
    "nonfinite-head": (ERROR, "(--deep) a value-head tensor holds NaN or Inf"),
    "nonfinite-base": (ERROR, "(--deep) a base tensor holds NaN or Inf"),
    "nonfinite-adapter": (ERROR, "(--deep) an adapter tensor holds NaN or Inf"),
    "reference-policy-missing": (ERROR, "a reference's policy folder is gone or is not a vhctl policy"),
    "reference-policy-changed": (ERROR, "the policy's shared tensors changed since the reference was made"),
    "reference-tensors": (
        ERROR,
        "a reference's own weights hold shared tensors, or it shares tensors the model lacks",
    ),
    "reference-missing": (WARNING, "a reference listed by a policy is not there"),
    "adapter-missing": (
        ERROR,
        "a listed adapter folder, its adapter_config.json or adapter_model.safetensors is missing",
    ),
    "adapter-invalid": (ERROR, "an adapter's config is unreadable, or a reward adapter has no score head"),
    "adapter-base-mismatch": (ERROR, "an adapter does not fit the base model (modules, shapes, hidden size)"),
    "adapter-base-name": (WARNING, "an adapter names another base model than the checkpoint's"),
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
# Past this many problems of one kind in one file, report them as one summary problem.
_MAX_LISTED = 5
_FINITE_CHUNK = 16 * 1024 * 1024


@dataclass
class Problem:
    """One thing wrong with a checkpoint. ``file`` is relative to the validated folder."""

    code: str
    file: str | None
    message: str
    severity: str = ERROR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{self.severity} {self.code}: {where}{self.message}"


def has_errors(problems: list[Problem]) -> bool:
    """True when any problem is an error (warnings alone do not fail a check)."""
    return any(p.severity == ERROR for p in problems)


def validate_checkpoint(
    path: str | os.PathLike[str], *, deep: bool = False, check_policy: bool = True
) -> list[Problem]:
    """List every problem of the checkpoint at ``path`` (empty list: it is sound).

    Args:
        path: the checkpoint folder.
        deep: also read every tensor and report NaN/Inf values.
        check_policy: for a reference, check its policy and the shared tensors' hash; for a policy,
            also validate the references nested in its folder.

    Returns:
        Problems in the order found; ``severity`` is ``"error"`` or ``"warning"``.

    Raises:
        SourceNotFoundError: ``path`` does not exist.
        NotAModelError: ``path`` is not a folder.
    """
    root = existing_folder(path, hint="pass the folder of a vhctl checkpoint")
    return _Validator(root, deep=deep, check_policy=check_policy).run()


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _inside(target: Path, roots: list[Path]) -> bool:
    return any(target == r or r in target.parents for r in roots)


def _type_ok(value: Any, types: tuple[type, ...], *, optional: bool = False) -> bool:
    if value is None:
        return optional
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def manifest_type_errors(manifest: Manifest) -> list[str]:
    """Fields of a parsed manifest that have the wrong type or an unsafe path (empty: well formed).

    ``Manifest`` checks the format, kind, architecture and paths; this covers the remaining fields so
    that a hand-edited manifest is reported instead of crashing a check.
    """
    out: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            out.append(what)

    vh = manifest.value_head
    need(_type_ok(vh.file, (str,)), "value_head.file must be a file name")
    if isinstance(vh.file, str):
        try:
            safe_relpath(vh.file, what="value_head.file")
        except VhctlError as exc:
            out.append(str(exc))
    need(
        _type_ok(vh.hidden_size, (int,)) and vh.hidden_size > 0,
        f"value_head.hidden_size is {vh.hidden_size!r}, expected a positive integer",
    )
    need(_type_ok(vh.dtype, (str,)), "value_head.dtype must be a dtype name such as 'float32'")
    need(_type_ok(vh.init, (str,), optional=True), "value_head.init must be a string")
    need(_type_ok(vh.std, (int, float), optional=True), "value_head.std must be a number or null")
    need(_type_ok(vh.dropout, (int, float), optional=True), "value_head.dropout must be a number or null")
    need(_type_ok(vh.seed, (int,), optional=True), "value_head.seed must be an integer or null")
    need(isinstance(manifest.base_model, dict), "base_model must be an object {source, revision}")
    if isinstance(manifest.base_model, dict):
        for key in ("source", "revision"):
            need(
                _type_ok(manifest.base_model.get(key), (str,), optional=True),
                f"base_model.{key} must be a string or null",
            )
    need(isinstance(manifest.extra, dict), "extra must be an object")
    need(isinstance(manifest.vhctl_version, str), "vhctl_version must be a string")
    need(
        manifest.frozen is None or isinstance(manifest.frozen, dict),
        "frozen must be an object {num_shared_layers, pattern} or null",
    )
    need(
        isinstance(manifest.references, list) and all(isinstance(r, str) and r for r in manifest.references),
        "references must be a list of relative paths",
    )
    for name, ad in manifest.adapters.items():
        for key in ("peft_type", "task_type", "base_model"):
            need(
                _type_ok(getattr(ad, key), (str,), optional=True),
                f"adapters.{name}.{key} must be a string or null",
            )
        need(
            _type_ok(ad.hidden_size, (int,), optional=True),
            f"adapters.{name}.hidden_size must be an integer or null",
        )
        need(_type_ok(ad.role, (str,), optional=True), f"adapters.{name}.role must be a string")
    ref = manifest.reference
    if manifest.kind == KIND_REFERENCE and ref is None:
        out.append("kind is 'reference' but there is no 'reference' section")
    if ref is not None:
        need(
            isinstance(ref.policy, str) and bool(ref.policy) and "\x00" not in ref.policy,
            "reference.policy must be the relative path of the policy folder",
        )
        need(
            _type_ok(ref.num_shared_layers, (int,), optional=True),
            "reference.num_shared_layers must be an integer or null",
        )
        need(_type_ok(ref.pattern, (str,), optional=True), "reference.pattern must be a string or null")
        need(
            isinstance(ref.shared_tensors, list) and all(isinstance(n, str) for n in ref.shared_tensors),
            "reference.shared_tensors must be a list of tensor names",
        )
        need(
            _type_ok(ref.shared_sha256, (str,), optional=True),
            "reference.shared_sha256 must be a hex string or null",
        )
    return out


def _hub_cache_blobs(root: Path) -> list[Path]:
    """The blob store of the Hugging Face cache repo that ``root`` is a snapshot of (or inside).

    Files in a cache snapshot (``models--org--name/snapshots/<rev>/``) are symlinks to
    ``../../blobs/<hash>``: those links stay inside the downloaded repo and are fine.
    """
    for folder in (root, *root.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(
            ("models--", "datasets--", "spaces--")
        ):
            return [folder.parent.parent / "blobs"]
    return []


def _fallback_hidden(config: dict[str, Any]) -> int | None:
    """Hidden size from raw config.json when transformers cannot build the config."""
    for key in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(key), int):
            return int(config[key])
    for sub in ("text_config", "decoder"):
        inner = config.get(sub)
        if isinstance(inner, dict) and isinstance(inner.get("hidden_size"), int):
            return int(inner["hidden_size"])
    return None


def _key_mapper(model: Any, state: dict[str, Any]) -> Any:
    """A function mapping checkpoint keys to model keys with transformers' own loading renames.

    transformers 5 renames keys on load and reverts them on save (``embed_out`` <-> ``lm_head`` for
    GPT-NeoX, fused MoE experts, missing ``transformer.`` prefixes in old GPT-2 files), so file keys
    and ``state_dict`` keys can differ legitimately. Returns None when that API is unavailable.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        conversions = get_model_conversion_mapping(model)
    except Exception:  # older/newer transformers without this API: compare names as they are
        return None
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None

    def mapper(name: str) -> tuple[str, bool]:
        key, pattern = rename_source_key(name, renamings, converters, prefix, state)
        return key, pattern is not None

    return mapper


@dataclass
class _Module:
    kind: str  # "linear" | "embedding"
    n_in: int
    n_out: int


class _Validator:
    """One pass over one checkpoint folder; nested references get their own instance."""

    def __init__(
        self,
        root: Path,
        *,
        deep: bool,
        check_policy: bool,
        prefix: str = "",
        visited: frozenset[Path] = frozenset(),
    ) -> None:
        self.root = root.resolve()
        self.deep = deep
        self.check_policy = check_policy
        self.prefix = prefix
        self.visited = visited | {self.root}
        self.problems: list[Problem] = []
        self.manifest: Manifest | None = None
        self.policy_dir: Path | None = None
        self.policy_index: dict[str, tuple[Path, TensorInfo]] | None = None
        self.outside: set[str] = set()
        self.reported_missing: set[str] = set()
        self.files: list[str] = []
        self.headers: dict[str, SafetensorsHeader | None] = {}
        self.config_dict: dict[str, Any] | None = None
        self.config: Any = None
        self.architecture: str | None = None
        self.hidden: int | None = None
        self.expected: dict[str, tuple[tuple[int, ...], str]] | None = None
        self.tied_groups: list[list[str]] = []
        self.modules: dict[str, _Module] = {}
        self.keep_fp32: list[str] = []
        self.ignore_unexpected: list[str] = []
        self.ignore_missing: list[str] = []
        self.head_rel = VALUE_HEAD_NAME
        self.key_mapper: Any = None
        self.manifest_files: dict[str, Any] = {}

    # -- reporting -----------------------------------------------------------------------
    def add(self, code: str, file: str | None, message: str) -> None:
        severity = PROBLEM_CODES[code][0]
        if file is not None:
            file = self.prefix + file
        elif self.prefix:
            file = self.prefix.rstrip("/")
        self.problems.append(Problem(code, file, message, severity))

    def add_many(self, code: str, file: str | None, items: list[str], what: str) -> None:
        """One problem per item, or one summary when there are many (a whole model cast wrongly)."""
        if len(items) <= _MAX_LISTED:
            for item in items:
                self.add(code, file, item)
        else:
            shown = "; ".join(items[:3])
            self.add(code, file, f"{len(items)} {what}, e.g. {shown}")

    # -- driver --------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        self._check_manifest()
        self._check_symlinks()
        self._check_files()
        self._load_config()
        self._read_headers()
        self._check_reference()
        self._check_base()
        self._check_head()
        self._check_adapters()
        if self.deep:
            self._check_finite()
        self._check_nested_references()
        return self.problems

    # -- manifest ------------------------------------------------------------------------
    def _check_manifest(self) -> None:
        path = self.root / MANIFEST_NAME
        if not path.exists():
            self.add(
                "manifest-missing",
                MANIFEST_NAME,
                "no vhctl.json: this folder is not a vhctl checkpoint "
                "(make one with 'vhctl wrap MODEL --out DIR')",
            )
            return
        if not path.is_file():
            self.add("manifest-invalid", MANIFEST_NAME, "vhctl.json is not a regular file")
            return
        try:
            manifest = Manifest.read(self.root)
        except VhctlError as exc:
            self.add("manifest-invalid", MANIFEST_NAME, str(exc))
            return
        except OSError as exc:
            self.add("manifest-invalid", MANIFEST_NAME, f"cannot read vhctl.json: {exc.strerror or exc}")
            return
        # The file list is checked by Manifest itself, so hashes can be verified even when other
        # fields are broken; the rest of the manifest is only trusted when every field is well typed.
        self.manifest_files = dict(manifest.files)
        errors = manifest_type_errors(manifest)
        for error in errors:
            self.add("manifest-invalid", MANIFEST_NAME, error)
        if errors:
            return
        self.head_rel = safe_relpath(manifest.value_head.file)
        if manifest.kind == KIND_REFERENCE and manifest.reference is not None:
            self.policy_dir = (self.root / str(manifest.reference.policy)).resolve()
        self.manifest = manifest

    # -- files ---------------------------------------------------------------------------
    def _check_symlinks(self) -> None:
        allowed = [self.root, *_hub_cache_blobs(self.root)]
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            for name in list(dirnames) + filenames:
                entry = here / name
                if not entry.is_symlink():
                    continue
                rel = entry.relative_to(self.root).as_posix()
                target = Path(os.path.realpath(entry))
                if not _inside(target, allowed):
                    self.outside.add(rel)
                    self.add(
                        "symlink-outside",
                        rel,
                        f"is a symlink to {os.readlink(entry)}, outside the checkpoint "
                        "folder; copy the file in instead",
                    )
            # Nested checkpoints are validated on their own; symlinked folders are not followed.
            dirnames[:] = [
                d for d in dirnames if not (here / d).is_symlink() and not (here / d / MANIFEST_NAME).exists()
            ]
        self.files = [f for f in iter_checkpoint_files(self.root) if f not in self.outside]
        for rel in self.files:
            if rel.lower().endswith(PICKLE_SUFFIXES):
                self.add(
                    "pickle-file",
                    rel,
                    "is a pickle file; vhctl never loads it unless asked "
                    "(--allow-pickle); prefer safetensors",
                )

    def _is_outside(self, rel: str) -> bool:
        """True when ``rel`` or a folder above it is a symlink leading out (never read through it)."""
        parts = rel.split("/")
        return any("/".join(parts[: i + 1]) in self.outside for i in range(len(parts)))

    def _check_files(self) -> None:
        if not self.manifest_files:
            return
        for rel, entry in sorted(self.manifest_files.items()):
            if self._is_outside(rel):
                continue
            path = self.root / rel
            if not path.is_file():
                self.reported_missing.add(rel)
                self.add("file-missing", rel, "is listed in the manifest but not in the folder")
                continue
            try:
                size = path.stat().st_size
                if size != entry.size:
                    self.add(
                        "size-mismatch",
                        rel,
                        f"is {size} bytes, the manifest says {entry.size} (truncated or replaced)",
                    )
                    continue
                digest = sha256_file(path)
            except OSError as exc:
                self.add("file-unreadable", rel, f"cannot be read: {exc.strerror or exc}")
                continue
            if digest != entry.sha256:
                self.add(
                    "hash-mismatch",
                    rel,
                    f"has sha256 {digest[:12]}..., the manifest says "
                    f"{entry.sha256[:12]}... (the file changed, or the manifest was edited)",
                )
        listed = set(self.manifest_files)
        for rel in self.files:
            if rel not in listed:
                self.add(
                    "unexpected-file",
                    rel,
                    "is not listed in the manifest (added after the checkpoint was written?)",
                )

    # -- config and the model it describes ------------------------------------------------
    def _is_peft_policy(self) -> bool:
        m = self.manifest
        return m is not None and isinstance(m.extra, dict) and "peft_policy" in m.extra

    def _local_base_dir(self) -> Path | None:
        """The folder holding a PEFT policy's base config, found without network (cache only)."""
        source = self.manifest.base_model.get("source") if self.manifest is not None else None
        if not isinstance(source, str) or not source:
            return None
        if source == TINY_MODEL_NAME:
            from vhctl._tiny import tiny_model_path

            return Path(tiny_model_path())
        if Path(source).is_dir():
            return Path(source)
        try:
            from huggingface_hub import try_to_load_from_cache

            revision = self.manifest.base_model.get("revision") if self.manifest is not None else None
            found = try_to_load_from_cache(
                source, CONFIG_NAME, revision=revision if isinstance(revision, str) else None
            )
        except Exception:  # an odd repo id or cache layout only means "not found"
            return None
        return Path(found).parent if isinstance(found, str) else None

    def _load_config(self) -> None:
        config_dir = self.root
        path = self.root / CONFIG_NAME
        if not path.is_file() and self._is_peft_policy():
            base_dir = self._local_base_dir()
            if base_dir is None or not (base_dir / CONFIG_NAME).is_file():
                self.add(
                    "config-unsupported",
                    None,
                    "this PEFT policy's base model config is not available "
                    "locally, so its adapter was not checked against the base",
                )
                return
            config_dir, path = base_dir, base_dir / CONFIG_NAME
        if not path.is_file():
            self.add(
                "config-missing", CONFIG_NAME, "config.json is not there; the base model cannot be loaded"
            )
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.add("config-invalid", CONFIG_NAME, f"cannot be read as JSON: {exc}")
            return
        if not isinstance(data, dict):
            self.add("config-invalid", CONFIG_NAME, "is not a JSON object")
            return
        self.config_dict = data
        self.hidden = _fallback_hidden(data)
        m = self.manifest
        if m is not None and data.get("model_type") != m.model_type:
            self.add(
                "manifest-config-mismatch",
                MANIFEST_NAME,
                f"model_type is {m.model_type!r}, config.json says {data.get('model_type')!r}",
            )
        self.architecture = m.architecture if m is not None else None
        try:
            from transformers import AutoConfig

            with quiet_transformers(warnings_too=True):
                self.config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)
            self.hidden = hidden_size_of(self.config)
            detected = detect_architecture(self.config, where=CONFIG_NAME)
        except Exception as exc:  # any failure here only means we cannot check deeper
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.add("config-unsupported", CONFIG_NAME, f"cannot check tensors against it: {first}")
            return
        if m is not None and detected != m.architecture:
            self.add(
                "manifest-config-mismatch",
                MANIFEST_NAME,
                f"architecture is {m.architecture!r}, config.json describes a {detected} model",
            )
        self.architecture = self.architecture or detected
        self._build_meta_model()

    def _build_meta_model(self) -> None:
        """Build the model on the meta device (no memory) to learn the tensors it expects."""
        import torch

        arch = self.architecture if self.architecture in (ARCH_CAUSAL, ARCH_SEQ2SEQ) else ARCH_CAUSAL
        try:
            with quiet_transformers(warnings_too=True), torch.device("meta"):
                model = auto_class_for(arch).from_config(self.config)
        except Exception as exc:
            self.add(
                "config-unsupported",
                CONFIG_NAME,
                f"transformers cannot build this {arch} model ({type(exc).__name__}: {exc}); "
                "tensors were not checked against the config",
            )
            return
        state = model.state_dict(keep_vars=True)
        self.expected = {
            name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()
        }
        groups: dict[int, list[str]] = {}
        for name, t in state.items():
            groups.setdefault(id(t), []).append(name)
        self.tied_groups = list(groups.values())
        self.keep_fp32 = [
            str(p)
            for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict")
            for p in (getattr(model, attr, None) or ())
        ]
        self.ignore_unexpected = [
            str(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
        ]
        self.ignore_missing = [
            str(p)
            for attr in ("_keys_to_ignore_on_load_missing", "_keys_to_ignore_on_save")
            for p in (getattr(model, attr, None) or ())
        ]
        self.key_mapper = _key_mapper(model, state)
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or getattr(weight, "ndim", 0) != 2:
                continue
            kind = type(module).__name__
            if isinstance(module, torch.nn.Linear):
                self.modules[name] = _Module("linear", module.in_features, module.out_features)
            elif kind == "Conv1D":  # GPT-2 style: weight is (in, out)
                self.modules[name] = _Module("linear", weight.shape[0], weight.shape[1])
            elif isinstance(module, torch.nn.Embedding):
                self.modules[name] = _Module("embedding", module.num_embeddings, module.embedding_dim)

    # -- headers -------------------------------------------------------------------------
    def _read_headers(self) -> None:
        for rel in self.files:
            if not rel.endswith(".safetensors"):
                continue
            try:
                self.headers[rel] = read_header(self.root / rel)
            except CheckpointError as exc:
                self.headers[rel] = None
                self.add("corrupt-header", rel, str(exc).replace(str(self.root / rel), "the file", 1))

    # -- reference -----------------------------------------------------------------------
    def _check_reference(self) -> None:
        m = self.manifest
        if m is None or m.kind != KIND_REFERENCE or m.reference is None or not self.check_policy:
            return
        ref = m.reference
        if self.policy_dir is None:
            return
        where = f"reference.policy {ref.policy!r}"
        if not self.policy_dir.is_dir():
            self.add(
                "reference-policy-missing",
                MANIFEST_NAME,
                f"{where} points at {self.policy_dir}, which does not exist; move the reference back "
                "next to its policy or re-create it with 'vhctl make-ref'",
            )
            return
        try:
            policy = Manifest.read(self.policy_dir)
        except VhctlError as exc:
            self.add("reference-policy-missing", MANIFEST_NAME, f"{where} is not a vhctl checkpoint: {exc}")
            return
        except OSError as exc:
            self.add("reference-policy-missing", MANIFEST_NAME, f"{where} cannot be read: {exc}")
            return
        if policy.kind != KIND_POLICY:
            self.add("reference-policy-missing", MANIFEST_NAME, f"{where} is a {policy.kind}, not a policy")
            return
        try:
            self.policy_index = tensor_index(self.policy_dir)
        except CheckpointError as exc:
            self.add("reference-policy-changed", MANIFEST_NAME, f"cannot read the policy's weights: {exc}")
            return
        if not ref.shared_tensors:
            return
        if not ref.shared_sha256:
            self.add(
                "manifest-invalid", MANIFEST_NAME, "reference.shared_tensors is set but shared_sha256 is not"
            )
            return
        try:
            digest = shared_tensors_sha256(self.policy_dir, ref.shared_tensors)
        except CheckpointError as exc:
            self.add("reference-policy-changed", MANIFEST_NAME, str(exc))
            return
        if digest != ref.shared_sha256:
            self.add(
                "reference-policy-changed",
                MANIFEST_NAME,
                f"the {len(ref.shared_tensors)} tensors shared with the policy at {ref.policy!r} have changed "
                "since this reference was made (sha256 differs); re-create it with 'vhctl make-ref'",
            )

    # -- base weights --------------------------------------------------------------------
    def _base_tensors(self) -> tuple[dict[str, tuple[str, TensorInfo]], bool]:
        """Base tensors name -> (relpath, info); the bool says whether a weight file was found."""
        out: dict[str, tuple[str, TensorInfo]] = {}
        if (self.root / SAFE_WEIGHTS_INDEX_NAME).is_file():
            try:
                weight_map = read_index(self.root)
            except CheckpointError as exc:
                self.add("index-invalid", SAFE_WEIGHTS_INDEX_NAME, str(exc))
                return out, True
            bad: list[str] = []
            for shard in sorted(set(weight_map.values())):
                if self._is_outside(shard):
                    continue
                if not (self.root / shard).is_file():
                    if shard not in self.reported_missing:
                        self.reported_missing.add(shard)
                        self.add(
                            "file-missing",
                            shard,
                            f"is named by {SAFE_WEIGHTS_INDEX_NAME} but not in the folder",
                        )
                    continue
                header = self.headers.get(shard)
                if header is None:
                    continue
                for name, info in header.tensors.items():
                    out[name] = (shard, info)
                    if weight_map.get(name) != shard:
                        bad.append(f"{shard} holds {name!r}, which the index does not map to it")
            for name, shard in weight_map.items():
                header = self.headers.get(shard)
                if header is not None and name not in header.tensors:
                    bad.append(f"the index puts {name!r} in {shard}, which does not hold it")
            self.add_many("index-invalid", SAFE_WEIGHTS_INDEX_NAME, bad, "index entries are wrong")
            return out, True
        if (self.root / SAFE_WEIGHTS_NAME).is_file():
            header = self.headers.get(SAFE_WEIGHTS_NAME)
            if header is not None:
                out = {name: (SAFE_WEIGHTS_NAME, info) for name, info in header.tensors.items()}
            return out, True
        return out, False

    def _check_peft_policy(self) -> None:
        """A PEFT policy stores its policy adapter at the root instead of base weights."""
        missing = [n for n in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME) if not (self.root / n).is_file()]
        for name in missing:
            self.add("adapter-missing", name, f"this PEFT policy has no {name}")
        config: dict[str, Any] = {}
        if ADAPTER_CONFIG_NAME not in missing:
            try:
                loaded = json.loads((self.root / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self.add(
                    "adapter-invalid", ADAPTER_CONFIG_NAME, f"cannot read the policy adapter's config: {exc}"
                )
        header = self.headers.get(ADAPTER_SAFE_NAME)
        if header is not None:
            self._check_adapter_tensors("policy", ADAPTER_SAFE_NAME, header, config, "policy")

    def _check_base(self) -> None:
        m = self.manifest
        if (
            self._is_peft_policy()
            and not (self.root / SAFE_WEIGHTS_NAME).is_file()
            and not (self.root / SAFE_WEIGHTS_INDEX_NAME).is_file()
        ):
            self._check_peft_policy()
            return
        own, found = self._base_tensors()
        is_ref = m is not None and m.kind == KIND_REFERENCE and m.reference is not None
        shared = set(m.reference.shared_tensors) if is_ref and m is not None and m.reference else set()
        if not found and not shared and SAFE_WEIGHTS_NAME not in self.reported_missing:
            pickled = [n for n in (PT_WEIGHTS_NAME, PT_WEIGHTS_INDEX_NAME) if (self.root / n).exists()]
            extra = f" (only {pickled[0]}, a pickle, is there)" if pickled else ""
            self.add(
                "weights-missing",
                None,
                f"no {SAFE_WEIGHTS_NAME} or sharded safetensors holds the base "
                f"model{extra}; re-create the checkpoint with 'vhctl wrap'",
            )
            return
        if shared:
            overlap = sorted(set(own) & shared)
            self.add_many(
                "reference-tensors",
                own[overlap[0]][0] if overlap else None,
                [f"holds {n!r}, which the reference shares with its policy" for n in overlap],
                "shared tensors are stored in the reference",
            )
        if self.expected is None:
            return
        expected = self.expected
        cfg = self.config_dict or {}
        check_float = "dtype" in cfg or "torch_dtype" in cfg
        by_file: dict[tuple[str, str], list[str]] = {}

        def note(code: str, rel: str, msg: str) -> None:
            by_file.setdefault((code, rel), []).append(msg)

        # File keys -> model keys, as transformers renames them on load (legacy names, prefixes, fused experts).
        covered: set[str] = set()
        strays: list[str] = []
        for name in sorted(set(own) | shared):
            model_key, converted = self._map_key(name)
            if model_key not in expected:
                if name in own:
                    rel = own[name][0]
                    if name.startswith(V_HEAD_PREFIX) or f".{V_HEAD_PREFIX}" in name:
                        note(
                            "unexpected-tensor",
                            rel,
                            f"holds {name!r}: the value head belongs in "
                            f"{VALUE_HEAD_NAME}, not in the base weights (TRL layout; re-wrap with 'vhctl wrap')",
                        )
                    elif not self._ignored(name, self.ignore_unexpected):
                        note("unexpected-tensor", rel, f"holds {name!r}, which the model does not have")
                else:
                    strays.append(f"reference.shared_tensors names {name!r}, which the model does not have")
                continue
            covered.add(model_key)
            if name in own:
                rel, info = own[name]
            elif (
                self.policy_index is not None and name in self.policy_index and m is not None and m.reference
            ):
                rel, info = (
                    f"{m.reference.policy}/{self.policy_index[name][0].name}",
                    self.policy_index[name][1],
                )
            else:
                continue
            self._compare(name, model_key, converted, rel, info, note, check_float)
        self.add_many(
            "reference-tensors", MANIFEST_NAME, strays, "shared tensor names are unknown to the model"
        )

        missing: list[str] = []
        for group in self.tied_groups:
            if any(n in covered for n in group):
                continue
            if all(self._ignored(n, self.ignore_missing) for n in group):
                continue
            aliases = f" (tied with {', '.join(group[1:])})" if len(group) > 1 else ""
            missing.append(f"{group[0]!r}{aliases} is in no weight file")
        self.add_many("missing-tensor", None, missing, "tensors are missing")
        for (code, rel), msgs in by_file.items():
            self.add_many(
                code,
                rel,
                msgs,
                "tensors differ from config.json"
                if code != "unexpected-tensor"
                else "tensors are not part of the model",
            )

    def _map_key(self, name: str) -> tuple[str, bool]:
        """The model key transformers loads file key ``name`` into, and whether a converter (which
        reshapes, e.g. fuses MoE experts) is involved."""
        if self.key_mapper is None:
            return name, False
        try:
            return self.key_mapper(name)
        except Exception:  # transformers internals: fall back to the plain name
            return name, False

    def _compare(
        self,
        name: str,
        model_key: str,
        converted: bool,
        rel: str,
        info: TensorInfo,
        note: Any,
        check_float: bool,
    ) -> None:
        assert self.expected is not None
        shape, dtype = self.expected[model_key]
        if not converted and info.shape != shape:
            note(
                "shape-mismatch",
                rel,
                f"{name!r} has shape {_fmt_shape(info.shape)}, config.json implies {_fmt_shape(shape)}",
            )
        actual = info.dtype_name
        if actual == dtype:
            return
        expected_float = dtype.startswith(("float", "bfloat"))
        if expected_float and info.is_float:
            if not check_float:
                return
            if actual == "float32" and any(
                re.search(rf"(^|\.){re.escape(p)}(\.|$)", model_key) for p in self.keep_fp32
            ):
                return
        note("dtype-mismatch", rel, f"{name!r} is {actual}, config.json implies {dtype}")

    @staticmethod
    def _ignored(name: str, patterns: list[str]) -> bool:
        for pattern in patterns:
            try:
                if re.search(pattern, name):
                    return True
            except re.error:
                if pattern in name:
                    return True
        return False

    # -- value head ----------------------------------------------------------------------
    def _check_head(self) -> None:
        rel = self.head_rel
        vh = self.manifest.value_head if self.manifest is not None else None
        if vh is not None and isinstance(vh.dtype, str) and vh.dtype not in HEAD_FLOAT_NAMES:
            self.add(
                "head-dtype",
                MANIFEST_NAME,
                f"value_head.dtype is {vh.dtype!r}; a value head must be one of "
                f"{', '.join(sorted(HEAD_FLOAT_NAMES))}",
            )
        manifest_hidden = vh.hidden_size if vh is not None and isinstance(vh.hidden_size, int) else None
        if manifest_hidden is not None and self.hidden is not None and manifest_hidden != self.hidden:
            self.add(
                "head-hidden-size",
                MANIFEST_NAME,
                f"value_head.hidden_size is {manifest_hidden}, the model's hidden size is {self.hidden}",
            )
        if self._is_outside(rel):
            return
        if not (self.root / rel).is_file():
            self.add("head-missing", rel, "the value head file is not there; re-create it with 'vhctl wrap'")
            return
        header = self.headers.get(rel)
        if header is None:
            return
        tensors = header.tensors
        for key in (V_HEAD_WEIGHT, V_HEAD_BIAS):
            if key not in tensors:
                self.add("head-missing", rel, f"has no tensor {key!r}")
        for key in sorted(set(tensors) - {V_HEAD_WEIGHT, V_HEAD_BIAS}):
            self.add(
                "head-shape",
                rel,
                f"holds unexpected tensor {key!r}; a value head has only {V_HEAD_WEIGHT} and {V_HEAD_BIAS}",
            )
        weight, bias = tensors.get(V_HEAD_WEIGHT), tensors.get(V_HEAD_BIAS)
        if weight is not None:
            if len(weight.shape) == 2 and weight.shape[0] == 1:
                head_hidden = weight.shape[1]
                if self.hidden is not None and head_hidden != self.hidden:
                    self.add(
                        "head-hidden-size",
                        rel,
                        f"{V_HEAD_WEIGHT} is {_fmt_shape(weight.shape)}: made for "
                        f"hidden size {head_hidden}, the model's is {self.hidden}",
                    )
                elif self.hidden is None and manifest_hidden is not None and head_hidden != manifest_hidden:
                    self.add(
                        "head-hidden-size",
                        rel,
                        f"{V_HEAD_WEIGHT} is {_fmt_shape(weight.shape)}, the "
                        f"manifest says hidden size {manifest_hidden}",
                    )
            else:
                want = f"(1, {self.hidden or manifest_hidden or 'hidden'})"
                self.add(
                    "head-shape",
                    rel,
                    f"{V_HEAD_WEIGHT} has shape {_fmt_shape(weight.shape)}, expected {want}",
                )
        if bias is not None and bias.shape != (1,):
            self.add("head-shape", rel, f"{V_HEAD_BIAS} has shape {_fmt_shape(bias.shape)}, expected (1,)")
        want_dtype = vh.dtype if vh is not None and vh.dtype in HEAD_FLOAT_NAMES else None
        for info in (weight, bias):
            if info is None:
                continue
            if info.dtype_name not in HEAD_FLOAT_NAMES:
                self.add(
                    "head-dtype",
                    rel,
                    f"{info.name} is {info.dtype_name}; a value head must be a float "
                    f"tensor ({', '.join(sorted(HEAD_FLOAT_NAMES))})",
                )
            elif want_dtype is not None and info.dtype_name != want_dtype:
                self.add(
                    "head-dtype", rel, f"{info.name} is {info.dtype_name}, the manifest says {want_dtype}"
                )

    # -- adapters ------------------------------------------------------------------------
    def _check_adapters(self) -> None:
        if self.manifest is None:
            return
        source = (
            self.manifest.base_model.get("source") if isinstance(self.manifest.base_model, dict) else None
        )
        for name, info in sorted(self.manifest.adapters.items()):
            rel_dir = safe_relpath(info.path)
            folder = self.root / rel_dir
            if self._is_outside(rel_dir):
                continue
            if not folder.is_dir():
                self.add("adapter-missing", rel_dir, f"adapter {name!r}: the folder is not there")
                continue
            cfg_rel, st_rel = f"{rel_dir}/{ADAPTER_CONFIG_NAME}", f"{rel_dir}/{ADAPTER_SAFE_NAME}"
            if not (self.root / cfg_rel).is_file():
                self.add("adapter-missing", cfg_rel, f"adapter {name!r} has no {ADAPTER_CONFIG_NAME}")
            if not (self.root / st_rel).is_file():
                pickled = (folder / ADAPTER_PT_NAME).exists()
                self.add(
                    "adapter-missing",
                    st_rel,
                    f"adapter {name!r} has no {ADAPTER_SAFE_NAME}"
                    + (f" (only {ADAPTER_PT_NAME}, a pickle)" if pickled else ""),
                )
            config: dict[str, Any] = {}
            if (self.root / cfg_rel).is_file():
                try:
                    loaded = json.loads((self.root / cfg_rel).read_text(encoding="utf-8"))
                    if not isinstance(loaded, dict):
                        raise ValueError("not a JSON object")
                    config = loaded
                except (OSError, UnicodeDecodeError, ValueError) as exc:
                    self.add("adapter-invalid", cfg_rel, f"adapter {name!r}: cannot read its config: {exc}")
            base_name = config.get("base_model_name_or_path") or info.base_model
            if base_name and source and str(base_name).rstrip("/") != str(source).rstrip("/"):
                self.add(
                    "adapter-base-name",
                    cfg_rel,
                    f"adapter {name!r} was made for {base_name!r}, the "
                    f"checkpoint's base is {source!r} (fine if it is the same model)",
                )
            if (
                isinstance(info.hidden_size, int)
                and self.hidden is not None
                and info.hidden_size != self.hidden
            ):
                self.add(
                    "adapter-base-mismatch",
                    MANIFEST_NAME,
                    f"adapter {name!r} is recorded with hidden size "
                    f"{info.hidden_size}, the model's is {self.hidden}",
                )
            header = self.headers.get(st_rel)
            if header is not None:
                self._check_adapter_tensors(name, st_rel, header, config, info.role)

    def _find_module(self, path: str) -> _Module | None:
        if path in self.modules:
            return self.modules[path]
        # Sequence-classification bases may name their trunk differently (T5: transformer.encoder...).
        tail = path.split(".", 1)[1] if "." in path else None
        if tail:
            for name, module in self.modules.items():
                if name == tail or name.endswith("." + tail):
                    return module
        return None

    def _check_adapter_tensors(
        self, name: str, rel: str, header: SafetensorsHeader, config: dict[str, Any], role: str | None
    ) -> None:
        problems: list[str] = []
        unknown: list[str] = []
        scores = [
            t for t in header.tensors.values() if "score" in t.name.split(".") and t.name.endswith("weight")
        ]
        if role == "reward" and not scores:
            self.add(
                "adapter-invalid",
                rel,
                f"reward adapter {name!r} has no 'score' head (save it from a "
                "SEQ_CLS PEFT model so that modules_to_save holds the score layer)",
            )
        for t in scores:
            if self.hidden is not None and (len(t.shape) != 2 or t.shape[1] != self.hidden):
                problems.append(
                    f"{t.name} is {_fmt_shape(t.shape)}, the model needs (num_labels, {self.hidden}): "
                    "made for a model of another hidden size"
                )
        if self.modules:
            lora_seen = False
            for t in header.tensors.values():
                match = re.match(
                    r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                    r"(?:\.weight)?$",
                    t.name,
                )
                if match is None or len(t.shape) != 2:
                    continue
                lora_seen = True
                path, part = match.groups()
                module = self._find_module(path)
                if module is None:
                    unknown.append(path)
                    continue
                if part == "lora_A" and t.shape[1] != module.n_in:
                    problems.append(f"{t.name} is {_fmt_shape(t.shape)}: {path} takes {module.n_in} inputs")
                elif part == "lora_B" and t.shape[0] != module.n_out:
                    problems.append(f"{t.name} is {_fmt_shape(t.shape)}: {path} has {module.n_out} outputs")
                elif part == "lora_embedding_A" and t.shape[1] != module.n_in:
                    problems.append(f"{t.name} is {_fmt_shape(t.shape)}: {path} has {module.n_in} embeddings")
                elif part == "lora_embedding_B" and t.shape[0] != module.n_out:
                    problems.append(f"{t.name} is {_fmt_shape(t.shape)}: {path} has width {module.n_out}")
            if unknown:
                problems.insert(
                    0,
                    f"targets module(s) the base model does not have ({', '.join(sorted(set(unknown))[:3])}"
                    f"{', ...' if len(set(unknown)) > 3 else ''}): made for another architecture",
                )
            if not lora_seen and not self._targets_match(config.get("target_modules")):
                problems.append(
                    f"target_modules {config.get('target_modules')!r} match no module of the base model"
                )
        if problems:
            self.add_many(
                "adapter-base-mismatch",
                rel,
                [f"adapter {name!r}: {p}" for p in problems],
                f"mismatches in adapter {name!r}",
            )

    def _targets_match(self, targets: Any) -> bool:
        if not targets or targets == "all-linear":
            return True
        names = list(self.modules)
        if isinstance(targets, str):
            try:
                return any(re.fullmatch(targets, n) for n in names)
            except re.error:
                return True
        if isinstance(targets, list):
            return any(n == t or n.endswith(f".{t}") for n in names for t in targets if isinstance(t, str))
        return True

    # -- deep: finite values ---------------------------------------------------------------
    def _check_finite(self) -> None:
        import torch

        for rel, header in sorted(self.headers.items()):
            if header is None:
                continue
            if rel == self.head_rel:
                code = "nonfinite-head"
            elif rel.startswith(f"{ADAPTERS_DIR}/") or rel == ADAPTER_SAFE_NAME:
                code = "nonfinite-adapter"
            else:
                code = "nonfinite-base"
            found: list[str] = []
            for info in header.tensors.values():
                torch_dtype = getattr(torch, info.dtype_name, None)
                if not info.is_float or torch_dtype is None or info.dtype in ("F8_E8M0",):
                    continue
                nan = inf = 0
                try:
                    for chunk in iter_tensor_bytes(header.path, info, chunk=_FINITE_CHUNK):
                        values = torch.frombuffer(bytearray(chunk), dtype=torch_dtype)
                        if values.dtype.itemsize == 1:
                            values = values.float()
                        nan += int(torch.isnan(values).sum())
                        inf += int(torch.isinf(values).sum())
                except (OSError, CheckpointError) as exc:
                    self.add("file-unreadable", rel, f"cannot read tensor {info.name!r}: {exc}")
                    break
                if nan or inf:
                    found.append(f"tensor {info.name!r} holds {nan} NaN and {inf} Inf value(s)")
            self.add_many(code, rel, found, "tensors hold NaN or Inf")

    # -- references nested in a policy ----------------------------------------------------
    def _check_nested_references(self) -> None:
        m = self.manifest
        if m is None or not m.references:
            return
        for rel in m.references:
            target = (self.root / rel).resolve()
            if not (target / MANIFEST_NAME).is_file():
                self.add(
                    "reference-missing",
                    MANIFEST_NAME,
                    f"reference {rel!r} listed in the manifest is not there (moved or deleted?)",
                )
                continue
            if not self.check_policy or target in self.visited or self.root not in target.parents:
                continue
            sub = _Validator(
                target,
                deep=self.deep,
                check_policy=True,
                prefix=f"{self.prefix}{target.relative_to(self.root).as_posix()}/",
                visited=self.visited,
            )
            self.problems.extend(sub.run())
