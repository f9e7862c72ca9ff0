"""``vhctl validate --format text|json|github|junit`` and several checkpoints in one call.

The GitHub lines are compared byte for byte with what the workflow-command syntax requires
(actions/toolkit ``command.ts``: ``escapeData`` / ``escapeProperty``). The JUnit XML is read with
junitparser and checked against the rules of the Ant JUnit schema that Jenkins and GitLab follow
(windyroad ``JUnit.xsd``, https://github.com/windyroad/JUnit-Schema): the schema itself is not
copied here, its constraints are written out in ``assert_follows_junit_schema``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.checkpoint.validate.report import annotation_path, escape_data, escape_property
from vhctl.checkpoint.validate.runner import Validation
from vhctl.cli.app import app
from vhctl.constants import VALUE_HEAD_NAME

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def models(tmp_path: Path, tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``models/good`` (sound) and ``models/bad`` (head one byte longer, a stray file), cwd = tmp_path."""
    root = tmp_path / "models"
    shutil.copytree(tiny_ckpt, root / "good")
    shutil.copytree(tiny_ckpt, root / "bad")
    with open(root / "bad" / VALUE_HEAD_NAME, "ab") as handle:
        handle.write(b"x")
    (root / "bad" / "notes.txt").write_text("hi")
    monkeypatch.chdir(tmp_path)
    return root


# -- --json and --format ------------------------------------------------------------------------
def test_json_is_format_json_and_a_conflict_is_a_usage_error(models: Path) -> None:
    by_alias = run("validate", "models/bad", "--json")
    by_format = run("validate", "models/bad", "--format", "json")
    assert by_alias.exit_code == by_format.exit_code == 1
    assert json.loads(by_alias.stdout) == json.loads(by_format.stdout)
    report = json.loads(by_alias.stdout)
    assert set(report) == {"checkpoint", "deep", "ok", "problems"}  # the single shape is unchanged
    assert report["checkpoint"] == "models/bad" and report["ok"] is False
    assert [p["code"] for p in report["problems"]] == ["size-mismatch", "unexpected-file"]
    assert run("validate", "models/good", "--json", "--format", "json").exit_code == 0
    for other in ("text", "github", "junit"):
        result = run("validate", "models/good", "--json", "--format", other)
        assert result.exit_code == 2, result.output
        assert "--json" in result.stderr and other in result.stderr
        assert "Traceback" not in result.output and result.stdout == ""


def test_unknown_format_is_refused(models: Path) -> None:
    result = run("validate", "models/good", "--format", "xml")
    assert result.exit_code == 2 and "xml" in result.output


# -- several checkpoints --------------------------------------------------------------------------
def test_several_checkpoints_text(models: Path) -> None:
    result = run("validate", "models/good", "models/good/")  # the same folder twice: checked once
    assert result.exit_code == 0, result.output
    assert result.stderr.count("models/good is valid") == 1 and "1 of" not in result.stderr
    result = run("validate", "models/good", "models/bad", "models/good")
    assert result.exit_code == 1
    assert "models/good is valid" in result.stderr
    assert "models/bad: 1 error(s), 1 warning(s)" in result.stderr
    assert "1 of 2 checkpoints have errors: models/bad" in result.stderr
    assert "# problems in models/bad" in result.stdout and "problems in models/good" not in result.stdout
    result = run("validate", "models/good", "models/good/../good", "models/bad/../good")
    assert result.exit_code == 0 and "all" not in result.stderr  # one folder, however it is written


def test_several_checkpoints_json_shape(models: Path) -> None:
    result = run("validate", "models/good", "models/bad", "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "deep", "checkpoints"} and report["ok"] is False and report["deep"] is False
    assert [c["checkpoint"] for c in report["checkpoints"]] == ["models/good", "models/bad"]
    assert [c["ok"] for c in report["checkpoints"]] == [True, False]
    for item in report["checkpoints"]:
        assert set(item) == {"checkpoint", "deep", "ok", "problems"}
    single = json.loads(run("validate", "models/bad", "--json").stdout)
    assert report["checkpoints"][1] == single


def test_a_missing_checkpoint_stops_before_any_is_validated(models: Path) -> None:
    result = run("validate", "models/good", "models/nope")
    assert result.exit_code == 1
    assert "models/nope" in result.stderr and "Traceback" not in result.output
    assert "is valid" not in result.stderr and result.stdout == ""
    result = run("validate", "models/good", "models/nope", "--format", "github")
    assert result.exit_code == 1
    assert result.stdout.startswith("::error title=vhctl validate::models/nope does not exist")


def test_from_manifests_validates_each_folder_once(models: Path) -> None:
    result = run(
        "validate", "--from-manifests", "--format", "json",
        "models/good/vhctl.json", "models/bad/vhctl.json", "models/good/config.json", "models/bad",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [c["checkpoint"] for c in report["checkpoints"]] == ["models/good", "models/bad"]
    result = run("validate", "models/good/vhctl.json")  # without the flag a file is still refused
    assert result.exit_code == 1 and "vhctl.json" in result.stderr


# -- GitHub workflow commands --------------------------------------------------------------------
def test_escaping_follows_the_workflow_command_rules() -> None:
    assert escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert escape_property("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext%3A a%2C b"
    assert escape_data("%0A") == "%250A"  # '%' first, so an escape in the text survives a round trip
    assert escape_property("a:b,c%") == "a%3Ab%2Cc%25"


def _unescape(text: str, prop: bool) -> str:
    """The runner's reading of an escaped value (the inverse of the toolkit's escaping)."""
    pairs = [("%0D", "\r"), ("%0A", "\n")] + ([("%3A", ":"), ("%2C", ",")] if prop else [])
    for code, char in pairs:
        text = text.replace(code, char)
    return text.replace("%25", "%")


@pytest.mark.parametrize("text", ["plain", "a%b", "%25", "x\r\ny", "k: v, w", "%3A%2C:,\n\r%"])
def test_escaping_round_trips(text: str) -> None:
    assert _unescape(escape_data(text), prop=False) == text
    assert _unescape(escape_property(text), prop=True) == text
    assert "\n" not in escape_data(text) and "\r" not in escape_data(text)
    assert ":" not in escape_property(text) and "," not in escape_property(text)


def test_github_lines_exact_bytes(models: Path) -> None:
    result = run("validate", "--format", "github", "models/good", "models/bad")
    assert result.exit_code == 1
    size = (models / "bad" / VALUE_HEAD_NAME).stat().st_size
    assert (
        result.stdout_bytes
        == (
            "::error file=models/bad/value_head.safetensors,title=size-mismatch::"
            f"is {size} bytes, the manifest says {size - 1} (truncated or replaced)\n"
            "::warning file=models/bad/notes.txt,title=unexpected-file::"
            "is not listed in the manifest (added after the checkpoint was written?)\n"
            "vhctl validate: 2 checkpoint(s), 1 error(s), 1 warning(s); failed: models/bad\n"
        ).encode()
    )
    clean = run("validate", "--format", "github", "models/good")
    assert clean.exit_code == 0
    assert clean.stdout == "vhctl validate: 1 checkpoint(s), 0 error(s), 0 warning(s)\n"


def test_github_escapes_names_and_messages(models: Path) -> None:
    ck = models / "bad"
    os.remove(ck / "notes.txt")
    with open(ck / VALUE_HEAD_NAME, "r+b") as handle:  # back to its recorded size and bytes
        handle.truncate((models / "good" / VALUE_HEAD_NAME).stat().st_size)
    os.symlink("/nowhere/p%q\r\nr:s,t", ck / "we,ird:na%me\r\nx")
    result = run("validate", "--format", "github", "models/bad")
    assert result.exit_code == 1
    assert result.stdout_bytes == (
        b"::error file=models/bad/we%2Cird%3Ana%25me%0D%0Ax,title=symlink-outside::"
        b"is a symlink to /nowhere/p%25q%0D%0Ar:s,t, outside the checkpoint folder; copy the file in instead\n"
        b"vhctl validate: 1 checkpoint(s), 1 error(s), 0 warning(s); failed: models/bad\n"
    )


def test_annotation_paths(tmp_path: Path) -> None:
    def path_of(given: str, file: str | None) -> str:
        v = Validation(path=given, root=Path(given).resolve(), deep=False)
        return annotation_path(v, file, tmp_path)

    assert path_of("runs/ck", "value_head.safetensors") == "runs/ck/value_head.safetensors"
    assert path_of("./runs/ck/", "ref/vhctl.json") == "runs/ck/ref/vhctl.json"
    assert path_of("runs/ck", None) == "runs/ck"  # a problem of the whole folder
    assert path_of(str(tmp_path / "runs" / "ck"), "config.json") == "runs/ck/config.json"
    outside = tmp_path.parent / "elsewhere"
    assert path_of(str(outside), "config.json") == (outside / "config.json").as_posix()


def test_github_problems_match_the_library(models: Path) -> None:
    """Every problem of the library is one annotation, in the same order, with its own words."""
    problems = validate_checkpoint(models / "bad")
    lines = run("validate", "--format", "github", "models/bad").stdout.splitlines()
    assert len(lines) == len(problems) + 1
    for line, p in zip(lines[:-1], problems, strict=True):
        kind = "error" if p.severity == "error" else "warning"
        assert line == f"::{kind} file=models/bad/{p.file},title={p.code}::{p.message}"


# -- JUnit XML ----------------------------------------------------------------------------------
def assert_follows_junit_schema(text: str) -> ET.Element:
    """The constraints of windyroad's JUnit.xsd (Ant's format, read by Jenkins and GitLab)."""
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "testsuites" and root.attrib == {}  # the schema declares no attribute here
    for index, suite in enumerate(root):
        assert suite.tag == "testsuite"
        attrs = suite.attrib
        for key in ("name", "timestamp", "hostname", "tests", "failures", "errors", "time", "package", "id"):
            assert key in attrs, key
        assert set(attrs) <= {"name", "timestamp", "hostname", "tests", "failures", "errors", "skipped", "time",
                              "package", "id"}  # fmt: skip
        assert attrs["name"].strip() and attrs["hostname"].strip() and attrs["package"].strip()
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", attrs["timestamp"])  # no time zone
        assert int(attrs["id"]) == index
        for key in ("tests", "failures", "errors", "skipped"):
            if key in attrs:
                int(attrs[key])
        assert re.fullmatch(r"\d+(\.\d+)?", attrs["time"])
        tags = [child.tag for child in suite]
        # sequence: properties (1), testcase (0..n), system-out (1), system-err (1)
        assert tags[0] == "properties" and tags[-2:] == ["system-out", "system-err"]
        assert set(tags[1:-2]) <= {"testcase"}
        for prop in suite[0]:
            assert prop.tag == "property" and prop.get("name") and "value" in prop.attrib
        cases = suite.findall("testcase")
        failures = 0
        for case in cases:
            assert set(case.attrib) == {"name", "classname", "time"}
            assert case.get("name") and case.get("classname")
            assert re.fullmatch(r"\d+(\.\d+)?", case.get("time", ""))
            assert len(case) <= 1  # a choice of at most one of skipped, error, failure
            for result in case:
                assert result.tag in ("skipped", "error", "failure")
                if result.tag != "skipped":
                    assert result.get("type")
                    assert set(result.attrib) <= {"type", "message"}
                failures += result.tag == "failure"
        assert int(attrs["tests"]) == len(cases) and int(attrs["failures"]) == failures
    return root


def test_junit_report(models: Path) -> None:
    junitparser = pytest.importorskip("junitparser")
    result = run("validate", "--format", "junit", "models/good", "models/bad")
    assert result.exit_code == 1
    root = assert_follows_junit_schema(result.stdout)
    xml = junitparser.JUnitXml.fromstring(result.stdout)
    suites = list(xml)
    assert [s.name for s in suites] == ["models/good", "models/bad"]
    checks = ["manifest", "files", "config", "base tensors", "value head", "references", "adapters"]
    for suite in suites:
        assert [c.name for c in suite] == checks
        assert {c.classname for c in suite} == {suite.name}
    good, bad = suites
    assert good.tests == 7 and good.failures == 0 and all(c.is_passed for c in good)
    assert bad.tests == 7 and bad.failures == 1 and bad.errors == 0
    failed = [c for c in bad if not c.is_passed]
    assert [c.name for c in failed] == ["files"]
    (failure,) = failed[0].result
    assert isinstance(failure, junitparser.Failure)
    assert failure.type == "size-mismatch"
    assert (
        failure.message.startswith("value_head.safetensors: is ")
        and "(truncated or replaced)" in failure.message
    )
    assert "error size-mismatch: value_head.safetensors:" in failure.text
    assert "warning unexpected-file: notes.txt:" in failure.text
    props = {p.name: p.value for p in bad.properties()}
    assert props["errors"] == "1" and props["warnings"] == "1" and props["deep"] == "false"
    assert props["checkpoint"] == str((models / "bad").resolve())
    assert "warning unexpected-file: notes.txt" in (root[1].findtext("system-out") or "")


def test_junit_deep_warnings_only_and_odd_characters(models: Path) -> None:
    junitparser = pytest.importorskip("junitparser")
    ck = models / "good"
    (ck / "odd\x01<&>name.txt").write_text("x")  # a warning only; \x01 cannot be in XML at all
    result = run("validate", "--format", "junit", "--deep", "models/good")
    assert result.exit_code == 0, result.output
    root = assert_follows_junit_schema(result.stdout)
    (suite,) = junitparser.JUnitXml.fromstring(result.stdout)
    assert [c.name for c in suite][-1] == "finite values" and suite.tests == 8 and suite.failures == 0
    assert all(c.is_passed for c in suite)  # warnings never fail a test case
    assert "warning unexpected-file: odd\\x01<&>name.txt:" in (root[0].findtext("system-out") or "")
    props = {p.name: p.value for p in suite.properties()}
    assert props["warnings"] == "1" and props["deep"] == "true"


def test_junit_several_failures_in_one_check(models: Path) -> None:
    pytest.importorskip("junitparser")
    ck = models / "bad"
    (ck / "config.json").write_text("{nope")  # config-invalid, after the size mismatch (another check)
    for name in ("a.pt", "b.pkl"):
        (ck / name).write_bytes(b"x")
    result = run("validate", "--format", "junit", "models/bad")
    assert result.exit_code == 1
    root = assert_follows_junit_schema(result.stdout)
    cases = {c.get("name"): c for c in root.iter("testcase")}
    files = cases["files"].find("failure")  # files are checked in name order: config.json first
    assert files is not None and files.get("type") == "size-mismatch"
    assert files.get("message", "").startswith("config.json: is 5 bytes, the manifest says ")
    assert files.get("message", "").endswith("(and 1 more error(s))")  # the head's size mismatch
    text = files.text or ""
    assert "error size-mismatch: value_head.safetensors:" in text and "warning pickle-file: a.pt:" in text
    config = cases["config"].find("failure")
    assert config is not None and config.get("type") == "config-invalid"
    assert root.find("testsuite").get("failures") == "2"


def test_a_model_cast_wrongly_is_one_line(models: Path) -> None:
    """More than 5 problems of one kind in one file are one problem, so one line of the report."""
    from safetensors.torch import load_file, save_file

    from vhctl.checkpoint.manifest import Manifest

    ck = models / "good"
    tensors = {name: t.half() for name, t in load_file(str(ck / "model.safetensors")).items()}
    save_file(tensors, str(ck / "model.safetensors"), metadata={"format": "pt"})
    manifest = Manifest.read(ck)
    manifest.refresh_files(ck)
    manifest.write(ck)
    result = run("validate", "models/good")
    assert result.exit_code == 1
    rows = [
        line
        for line in result.stdout.splitlines()
        if not line.startswith("#") and line != "severity\tcode\tfile\tmessage"
    ]
    assert len(rows) == 1 and rows[0].startswith(
        f"error\tdtype-mismatch\tmodel.safetensors\t{len(tensors)} tensors differ"
    )
    lines = run("validate", "--format", "github", "models/good").stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(
        "::error file=models/good/model.safetensors,title=dtype-mismatch::"
    )
