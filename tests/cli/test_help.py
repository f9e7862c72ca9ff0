"""Help pages and plain output that read like the ``gh`` and ``hf`` CLIs (issue #13, item 6).

Every command's ``--help`` is rendered: upper-case names for arguments and option values, no
braces or Python types (``{ckpt}``, ``<str>``, ``<int range>``), and no default shown for a flag,
a count or an option without one. ``vhctl info`` flattens nested fields into readable rows.
"""

from __future__ import annotations

import re
import shutil

import pytest
import typer
from helpers.tiny_models import make_reward_adapter, make_trl_checkpoint, save_tiny_model
from typer.testing import CliRunner

from vhctl.cli.app import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
# Typer's own renderings of a value's type or of a default that means "nothing".
FORBIDDEN = ("<str>", "<int", "<float>", "<path>", "<list", "[default: 0]", "[default: False]", "[default: None]",
             "[default: ()]", "[default: (")  # fmt: skip
TYPE_TAG = re.compile(r"<[a-z][\w .|\[\]]*>")


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _sections(text: str) -> dict[str, list[str]]:
    """``Usage`` (the usage line, joined when wrapped) and each ``Name:`` section's lines."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("Usage:"):
            current = "Usage"
            sections[current] = [line[len("Usage:") :]]
        elif re.fullmatch(r"[A-Z][a-z]+:", line):
            current = line[:-1]
            sections[current] = []
        elif not line.strip():
            current = None if current == "Usage" else current
        elif current is not None:
            sections[current].append(line)
    return sections


def _check_names(tokens: list[str], where: str) -> None:
    """Argument names and option values are upper-case (a list of choices like ``trl|seqcls`` may stay)."""
    after_option = False
    for token in tokens:
        if token.startswith("-"):
            after_option = True
            continue
        bare = token.strip("[],").removesuffix("...")
        if after_option and "|" in bare:
            pass
        else:
            assert bare == bare.upper(), f"{where}: {token!r} is not an upper-case name"
        after_option = False


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_like_gh_and_hf(command: str) -> None:
    text = _help(*([command] if command else []))
    for needle in FORBIDDEN:
        assert needle not in text, f"vhctl {command} --help shows {needle!r}"
    assert not TYPE_TAG.search(text), f"vhctl {command} --help shows a type tag: {TYPE_TAG.search(text)}"
    sections = _sections(text)

    usage = " ".join(sections["Usage"]).split()
    assert usage[:2] == ["vhctl", *([command] if command else ["[OPTIONS]"])][:2]
    assert not any(c in " ".join(usage) for c in "{}<>"), f"usage line: {' '.join(usage)}"
    _check_names([t for t in usage[1 + bool(command) :] if t != "[OPTIONS]"], f"vhctl {command} usage")

    for line in sections.get("Arguments", []):
        if line.startswith("  ") and not line.startswith("   "):
            name = line.split()[0]
            _check_names([name], f"vhctl {command} arguments")
    for line in sections.get("Options", []):
        if line.startswith("  -"):  # an option's first line (wrapped help is indented further)
            names = re.split(r"\s{2,}", line.strip())[0]
            assert not any(c in names for c in "{}<>"), f"vhctl {command}: option line {line!r}"
            _check_names(names.replace(",", " ").split(), f"vhctl {command} options")
    if not command:
        assert set(COMMANDS) <= {line.split()[0] for line in sections["Commands"] if line.startswith("  ")}
        assert not any(line.rstrip().endswith("...") for line in sections["Commands"]), "cut-off summaries"


def test_a_usage_error_shows_the_same_usage_line() -> None:
    result = runner.invoke(app, ["score"])
    assert result.exit_code == 2
    assert "Usage: vhctl score [OPTIONS] CKPT" in result.output and "{" not in result.output
    result = runner.invoke(app, ["wrap", "vhctl:tiny"])
    assert result.exit_code == 2 and "Usage: vhctl wrap [OPTIONS] MODEL --out DIR" in result.output


# -- plain output of info and validate -------------------------------------------------------------


def _rows(stdout: str) -> dict[str, str]:
    """``vhctl info``'s first table (not a terminal: tab-separated) as field -> value."""
    rows: dict[str, str] = {}
    for line in stdout.split("# files")[0].splitlines()[2:]:
        field, value = line.split("\t")
        rows[field] = value
    return rows


def _info(path) -> dict[str, str]:
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    for field, value in rows.items():
        assert not value.startswith(("{", "[")), f"{field} is raw JSON: {value}"
        assert value not in ("True", "False", "None"), f"{field} is a Python value: {value}"
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory):
    """A tiny checkpoint with a reference, one with a reward adapter, a TRL PEFT folder, a plain model."""
    tmp = tmp_path_factory.mktemp("plain")
    ref = tmp / "withref"
    assert (
        runner.invoke(
            app, ["wrap", "vhctl:tiny", "--out", str(ref), "--init", "normal", "--seed", "0"]
        ).exit_code
        == 0
    )
    assert runner.invoke(app, ["make-ref", str(ref), "--shared", "1"]).exit_code == 0
    base = save_tiny_model("gpt2", tmp / "base")
    adapter = tmp / "withad"
    assert runner.invoke(app, ["wrap", str(base), "--out", str(adapter)]).exit_code == 0
    rm = make_reward_adapter("gpt2", tmp / "rm", base)
    assert runner.invoke(app, ["attach-reward-adapter", str(adapter), str(rm), "--name", "rm"]).exit_code == 0
    make_trl_checkpoint("gpt2", tmp / "trl", "peft")
    return {"withref": ref, "withad": adapter, "trl": tmp / "trl", "base": base, "tmp": tmp}


def test_info_flattens_references_into_rows(folders) -> None:
    rows = _info(folders["withref"])
    assert rows["references.ref"] == "found"
    assert rows["value_head.present"] == "yes" and rows["value_head.shape"] == "1 x 64"
    assert rows["frozen.num_shared_layers"] == "1"
    copy = folders["tmp"] / "ref-gone"
    shutil.copytree(folders["withref"], copy)
    shutil.rmtree(copy / "ref")
    assert _info(copy)["references.ref"] == "missing"
    reference = _info(folders["withref"] / "ref")
    assert reference["reference.policy"] == ".." and reference["reference.policy_found"] == "yes"


def test_info_rows_for_adapters_trl_folders_and_plain_models(folders) -> None:
    rows = _info(folders["withad"])
    assert rows["adapters.rm.path"] == "adapters/rm" and rows["adapters.rm.role"] == "reward"
    assert rows["adapters.rm.target_modules"] == "c_attn" and rows["adapters.rm.score_shape"] == "1 x 32"
    trl = _info(folders["trl"])
    assert trl["layout"] == "peft-adapter" and trl["adapters.adapter.present"] == "yes"
    plain = _info(folders["base"])
    assert (
        plain["layout"] == "transformers" and plain["pickle_weights"] == "no" and plain["value_head"] == "-"
    )


@pytest.mark.parametrize("name", ["withref", "withad", "trl", "base"])
def test_validate_plain_output_is_a_table_and_one_line(folders, name: str) -> None:
    result = runner.invoke(app, ["validate", str(folders[name])])
    assert result.exit_code == (0 if name.startswith("with") else 1), result.output
    assert "Traceback" not in result.output
    lines = result.stdout.splitlines()
    if lines:
        assert lines[0] == f"# problems in {folders[name]}" and lines[1] == "severity\tcode\tfile\tmessage"
        assert all(len(line.split("\t")) == 4 for line in lines[2:])
    assert len(result.stderr.splitlines()) == 1
    assert "PosixPath(" not in result.output and "{'" not in result.output


def test_a_pattern_that_matches_nothing_shows_the_layer_names(tiny_ckpt, tmp_path) -> None:
    result = runner.invoke(app, ["make-ref", str(tiny_ckpt), "--shared", "1", "--pattern", "blocks.{layer}",
                                 "--out", str(tmp_path / "ref")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--pattern 'blocks.{layer}' matches no parameter" in result.stderr
    assert "'transformer.h.{layer}'" in result.stderr and "transformer.h.0." in result.stderr
    assert "named_parameters" not in result.stderr and not (tmp_path / "ref").exists()
