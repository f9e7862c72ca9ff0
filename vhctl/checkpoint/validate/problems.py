"""What validation reports: the problem codes, one ``Problem``, and the list that collects them.

Codes are stable (scripts and CI match on them); their severity is fixed here, never by a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ERROR",
    "Findings",
    "MAX_LISTED",
    "PROBLEM_CODES",
    "Problem",
    "SUMMARY_EXAMPLES",
    "WARNING",
    "fmt_shape",
    "has_errors",
]

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
        "a file's sha256 differs from the manifest (changed bytes, hand-edited manifest, or a corrupt "
        "Hugging Face cache blob whose name wrap took as the digest)",
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

# Past this many problems of one kind in one file, they are reported as one summary problem, so a
# model cast to the wrong dtype gives one line instead of hundreds.
MAX_LISTED = 5
# How many of the summarised items the summary quotes.
SUMMARY_EXAMPLES = 3


@dataclass
class Problem:
    """One thing wrong with a checkpoint. ``file`` is relative to the validated folder.

    ``check`` names the check family that found it (``files``, ``value head``...; see
    ``CHECKS`` in ``vhctl.checkpoint.validate.runner``); it is not part of ``to_dict`` nor of
    equality, so the JSON report keeps its four keys.
    """

    code: str
    file: str | None
    message: str
    severity: str = ERROR
    check: str = field(default="", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "file": self.file, "message": self.message, "severity": self.severity}

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{self.severity} {self.code}: {where}{self.message}"


def has_errors(problems: list[Problem]) -> bool:
    """True when any problem is an error (warnings alone do not fail a check)."""
    return any(p.severity == ERROR for p in problems)


def fmt_shape(shape: tuple[int, ...]) -> str:
    """A shape as Python writes a tuple: ``(1, 32)``, ``(1,)``."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass
class Findings:
    """The problems of one validation, in the order found.

    ``prefix`` is prepended to file names (a reference nested in a policy reports ``ref/...``);
    ``check`` is the check family running now, stamped on each problem added.
    """

    prefix: str = ""
    check: str = ""
    problems: list[Problem] = field(default_factory=list)

    def add(self, code: str, file: str | None, message: str) -> None:
        """Record one problem; its severity comes from ``PROBLEM_CODES``."""
        severity = PROBLEM_CODES[code][0]
        if file is not None:
            file = self.prefix + file
        elif self.prefix:
            file = self.prefix.rstrip("/")
        self.problems.append(Problem(code, file, message, severity, check=self.check))

    def add_many(self, code: str, file: str | None, items: list[str], what: str) -> None:
        """One problem per item, or one summary when there are more than ``MAX_LISTED``.

        Args:
            code: the problem code of every item.
            file: the file they are all about.
            items: one message per problem.
            what: the plural noun phrase of the summary ("tensors differ from config.json").
        """
        if len(items) <= MAX_LISTED:
            for item in items:
                self.add(code, file, item)
        else:
            shown = "; ".join(items[:SUMMARY_EXAMPLES])
            self.add(code, file, f"{len(items)} {what}, e.g. {shown}")
