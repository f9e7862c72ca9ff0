"""Run the checks of one checkpoint in order, on one shared state, and collect what they find.

The order is part of the contract (problems are listed in the order found): manifest, files,
config, headers, reference, base tensors, value head, adapters, ``--deep`` values, then the
references nested in a policy, each validated as a checkpoint of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vhctl.checkpoint.validate.adapters import check_adapters
from vhctl.checkpoint.validate.base import check_base
from vhctl.checkpoint.validate.config import check_config
from vhctl.checkpoint.validate.files import check_files, check_manifest, check_symlinks, read_headers
from vhctl.checkpoint.validate.finite import check_finite
from vhctl.checkpoint.validate.head import check_head
from vhctl.checkpoint.validate.problems import ERROR, Findings, Problem, has_errors
from vhctl.checkpoint.validate.references import check_reference, nested_references
from vhctl.checkpoint.validate.state import CheckState
from vhctl.errors import CheckpointError
from vhctl.io.files import existing_folder

__all__ = [
    "CHECKS",
    "DEEP_ONLY",
    "InvalidCheckpointError",
    "Validation",
    "require_valid",
    "run_checks",
    "validate_checkpoint",
]

# The check families, in report order, with what each covers (JUnit writes one test case per family).
CHECKS: dict[str, str] = {
    "manifest": "vhctl.json reads and follows the format",
    "files": "listed files are there with their size and sha256; symlinks, stray and pickle files; headers",
    "config": "config.json reads, agrees with the manifest and builds the model",
    "base tensors": "the base weights hold the tensors, shapes and dtypes config.json implies",
    "value head": "value_head.safetensors holds a (1, hidden) weight and a (1,) bias of the manifest's dtype",
    "references": "a reference's policy is unchanged; a policy's references are there and valid",
    "adapters": "listed adapters are there and fit the base model",
    "finite values": "(--deep) every tensor holds only finite values",
}
DEEP_ONLY = frozenset({"finite values"})

_STEPS: tuple[tuple[str, Callable[[CheckState], None]], ...] = (
    ("manifest", check_manifest),
    ("files", check_symlinks),
    ("files", check_files),
    ("config", check_config),
    ("files", read_headers),
    ("references", check_reference),
    ("base tensors", check_base),
    ("value head", check_head),
    ("adapters", check_adapters),
    ("finite values", check_finite),
)


@dataclass
class Validation:
    """The outcome of validating one checkpoint folder.

    ``checks`` maps each check family that ran (in ``CHECKS`` order) to the seconds it took; each
    problem's ``check`` names its family.
    """

    path: str  # as given
    root: Path  # resolved
    deep: bool
    problems: list[Problem] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)
    started: datetime = field(default_factory=datetime.now)

    @property
    def ok(self) -> bool:
        """No error (warnings allowed)."""
        return not has_errors(self.problems)


def run_checks(path: str | os.PathLike[str], *, deep: bool = False, check_policy: bool = True) -> Validation:
    """``validate_checkpoint`` that also says which checks ran and how long each took (for reports).

    Args and Raises: as ``validate_checkpoint``.

    Returns:
        A ``Validation`` whose ``problems`` are those ``validate_checkpoint`` returns.
    """
    root = existing_folder(path, hint="pass the folder of a vhctl checkpoint").resolve()
    result = Validation(path=os.fspath(path), root=root, deep=deep)
    state = CheckState(
        root=root, deep=deep, check_policy=check_policy, log=Findings(), visited=frozenset({root})
    )
    seconds: dict[str, float] = {}
    _run(state, seconds)
    result.problems = state.log.problems
    result.checks = {name: seconds[name] for name in CHECKS if name in seconds}
    return result


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
    return run_checks(path, deep=deep, check_policy=check_policy).problems


class InvalidCheckpointError(CheckpointError):
    """A checkpoint with errors, refused by an operation; ``problems`` lists the errors."""

    def __init__(self, message: str, *, hint: str | None = None, problems: list[Problem]) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems


def require_valid(path: str | os.PathLike[str], *, refusing: str) -> None:
    """Refuse a checkpoint ``validate_checkpoint`` finds errors in (warnings pass).

    Args:
        path: the checkpoint folder.
        refusing: what the caller did not do, for the message (``"nothing was uploaded"``).

    Raises:
        InvalidCheckpointError: naming the first three errors; ``problems`` holds them all.
    """
    errors = [p for p in validate_checkpoint(path, deep=False) if p.severity == ERROR]
    if errors:
        shown = "; ".join(f"{p.file}: {p.message}" if p.file else p.message for p in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidCheckpointError(
            f"{path} is not a valid checkpoint, {refusing}: {shown}{more}",
            hint=f"run 'vhctl validate {path}' for the full list",
            problems=errors,
        )


def _run(state: CheckState, seconds: dict[str, float]) -> None:
    """Every step on ``state``, then the nested references (their problems follow the policy's)."""
    for family, step in _STEPS:
        if family in DEEP_ONLY and not state.deep:
            continue
        start = time.perf_counter()
        state.log.check = family
        step(state)
        seconds[family] = seconds.get(family, 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    state.log.check = "references"
    for target in nested_references(state):
        sub = CheckState(
            root=target,
            deep=state.deep,
            check_policy=True,
            log=Findings(prefix=f"{state.log.prefix}{target.relative_to(state.root).as_posix()}/"),
            visited=state.visited | {target},
        )
        _run(sub, {})
        state.log.problems.extend(sub.log.problems)
    seconds["references"] = seconds.get("references", 0.0) + time.perf_counter() - start
