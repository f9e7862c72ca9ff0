"""Validation results in the formats CI systems read: JSON, GitHub workflow commands, JUnit XML.

Pure functions from ``Validation`` results to text; the CLI chooses one and writes it to stdout.

- JSON: one checkpoint gives ``{"checkpoint", "deep", "ok", "problems"}`` (the shape scripts have
  always parsed); several give ``{"ok", "deep", "checkpoints": [that object, ...]}``.
- GitHub: one ``::error`` / ``::warning`` workflow command per problem, anchored at the problem's
  file, then one summary line.
- JUnit: a ``<testsuite>`` per checkpoint and a ``<testcase>`` per check family that ran (see
  ``CHECKS``). A family with errors has one ``<failure>`` whose ``type`` is the first error's code,
  whose ``message`` is that error, and whose text lists every problem of the family; warnings never
  fail a test case: they are in the suite's ``<system-out>`` and counted in its ``warnings``
  property. The layout follows the Ant JUnit schema that Jenkins and GitLab read (windyroad
  ``JUnit.xsd``: required ``properties``, ``system-out``, ``system-err``, suite ``id``/``package``).
"""

from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

from vhctl.checkpoint.validate.problems import ERROR
from vhctl.checkpoint.validate.runner import CHECKS, Validation

__all__ = [
    "JUNIT_PACKAGE",
    "annotation_path",
    "counts",
    "escape_data",
    "escape_property",
    "github_commands",
    "json_report",
    "junit_xml",
    "summary_line",
]

# Characters XML 1.0 cannot carry at all (even escaped): C0 controls but tab/newline/CR, and
# the surrogate and non-character code points.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
JUNIT_PACKAGE = "vhctl.validate"


def counts(validation: Validation) -> tuple[int, int]:
    """(errors, warnings) of one checkpoint."""
    errors = sum(p.severity == ERROR for p in validation.problems)
    return errors, len(validation.problems) - errors


# -- JSON ---------------------------------------------------------------------------------------
def json_report(validations: list[Validation]) -> dict[str, Any]:
    """The ``--format json`` document (one checkpoint: the single shape, unchanged since 0.1)."""
    items = [
        {
            "checkpoint": v.path,
            "deep": v.deep,
            "ok": v.ok,
            "problems": [p.to_dict() for p in v.problems],
        }
        for v in validations
    ]
    if len(items) == 1:
        return items[0]
    return {
        "ok": all(v.ok for v in validations),
        "deep": any(v.deep for v in validations),
        "checkpoints": items,
    }


# -- GitHub workflow commands ---------------------------------------------------------------------
def escape_data(text: str) -> str:
    """Escape a workflow command's message: ``%``, CR and LF (in that order, ``%`` first)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: as a message, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(validation: Validation, file: str | None, cwd: Path) -> str:
    """Where GitHub should anchor a problem: the checkpoint path joined with the problem's file,
    relative to ``cwd`` (the repository root in a workflow) when it lies inside it."""
    joined = Path(os.path.normpath(os.path.join(validation.path, file or "")))
    if joined.is_absolute():
        for base in (cwd, cwd.resolve()):
            try:
                return joined.relative_to(base).as_posix()
            except ValueError:
                continue
    return PurePosixPath(joined.as_posix()).as_posix()


def github_commands(validations: list[Validation], cwd: Path | None = None) -> str:
    """One ``::error``/``::warning`` line per problem, then a one-line summary (ends with a newline)."""
    cwd = cwd if cwd is not None else Path.cwd()
    lines: list[str] = []
    for v in validations:
        for p in v.problems:
            command = "error" if p.severity == ERROR else "warning"
            props = f"file={escape_property(annotation_path(v, p.file, cwd))},title={escape_property(p.code)}"
            lines.append(f"::{command} {props}::{escape_data(p.message)}")
    lines.append(summary_line(validations))
    return "\n".join(lines) + "\n"


def summary_line(validations: list[Validation]) -> str:
    """``vhctl validate: 2 checkpoint(s), 1 error(s), 0 warning(s); failed: runs/a``."""
    errors = warnings = 0
    for v in validations:
        e, w = counts(v)
        errors, warnings = errors + e, warnings + w
    failed = [v.path for v in validations if not v.ok]
    text = f"vhctl validate: {len(validations)} checkpoint(s), {errors} error(s), {warnings} warning(s)"
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


# -- JUnit XML ----------------------------------------------------------------------------------
def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: each forbidden character written as ``\\xNN`` / ``\\uNNNN``."""
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], text)


def _families(validation: Validation) -> list[str]:
    """The check families to report: those that ran, in ``CHECKS`` order, plus any a problem names."""
    names = [n for n in CHECKS if n in validation.checks]
    extra = [p.check for p in validation.problems if p.check and p.check not in names]
    return names + list(dict.fromkeys(extra))


def _testcase(suite: ET.Element, validation: Validation, family: str) -> bool:
    """Add the test case of one check family; True when it failed (it has an error)."""
    problems = [p for p in validation.problems if p.check == family]
    case = ET.SubElement(
        suite,
        "testcase",
        name=family,
        classname=_xml_text(validation.path),
        time=f"{validation.checks.get(family, 0.0):.3f}",
    )
    errors = [p for p in problems if p.severity == ERROR]
    if not errors:
        return False
    first = errors[0]
    message = (f"{first.file}: " if first.file else "") + first.message
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    failure = ET.SubElement(case, "failure", type=first.code, message=_xml_text(message))
    failure.text = _xml_text("\n".join(str(p) for p in problems) + "\n")
    return True


def _testsuite(parent: ET.Element, validation: Validation, index: int, hostname: str) -> None:
    errors, warnings = counts(validation)
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=_xml_text(validation.path),
        package=JUNIT_PACKAGE,
        id=str(index),
        timestamp=validation.started.strftime("%Y-%m-%dT%H:%M:%S"),
        hostname=hostname,
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("checkpoint", str(validation.root)),
        ("deep", "true" if validation.deep else "false"),
        ("errors", str(errors)),
        ("warnings", str(warnings)),
    ):
        ET.SubElement(props, "property", name=name, value=_xml_text(value))
    families = _families(validation)
    failed = sum(_testcase(suite, validation, family) for family in families)
    out = ET.SubElement(suite, "system-out")
    out.text = _xml_text("".join(f"{p}\n" for p in validation.problems))
    ET.SubElement(suite, "system-err")
    suite.set("tests", str(len(families)))
    suite.set("failures", str(failed))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{sum(validation.checks.values()):.3f}")


def junit_xml(validations: list[Validation], hostname: str | None = None) -> str:
    """A JUnit XML document (``<testsuites>``, UTF-8, with its declaration) for the checkpoints."""
    host = hostname or socket.gethostname() or "localhost"
    root = ET.Element("testsuites")
    for index, validation in enumerate(validations):
        _testsuite(root, validation, index, host)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
