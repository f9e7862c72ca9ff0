"""Check a vhctl checkpoint without loading it, and list every problem found.

``validate_checkpoint`` is built for CI: it never stops at the first problem and never raises for a
broken checkpoint (only for a path that is not there or not a folder). Each problem carries a stable
code (see ``PROBLEM_CODES``) so scripts can match on it. By default only headers and file hashes are
read; ``deep=True`` also reads every tensor to check that all values are finite.

One module per concern: ``problems`` (codes, ``Problem``, summarising), ``files`` (manifest and
files), ``config`` (config.json and the meta-device model), ``base``, ``head``, ``references``,
``adapters``, ``finite`` (``--deep``), ``runner`` (the order) and ``report`` (CI output formats).
"""

from vhctl.checkpoint.manifest import manifest_type_errors
from vhctl.checkpoint.validate.problems import ERROR, PROBLEM_CODES, WARNING, Problem, has_errors
from vhctl.checkpoint.validate.runner import (
    CHECKS,
    InvalidCheckpointError,
    Validation,
    require_valid,
    run_checks,
    validate_checkpoint,
)

__all__ = [
    "CHECKS",
    "ERROR",
    "PROBLEM_CODES",
    "WARNING",
    "InvalidCheckpointError",
    "Problem",
    "Validation",
    "has_errors",
    "manifest_type_errors",
    "require_valid",
    "run_checks",
    "validate_checkpoint",
]
