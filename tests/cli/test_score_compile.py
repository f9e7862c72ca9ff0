"""``vhctl score --compile``: the choice reaches the scorer, auto reads the input file's size, and a
compile that fails is one warning line, never an error (no model is compiled here: see
tests/scoring/test_compiled_slow.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.scoring import compiled

runner = CliRunner()
LINES = "".join(json.dumps({"id": i, "text": "word " * (1 + i % 23)}) + "\n" for i in range(40))


def values(result) -> list[float]:
    return [json.loads(line)["value"] for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "ck"
    result = runner.invoke(app, ["wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def failing_compile(monkeypatch):
    def compile_(*args, **kwargs):
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(torch, "compile", compile_)


def test_a_bad_choice_is_a_usage_error(ckpt):
    result = runner.invoke(app, ["score", str(ckpt), "--compile", "sometimes"], input="x\n")
    assert result.exit_code == 2 and "auto, on or off" in result.output and result.stdout == ""


def test_auto_compiles_a_file_only_when_it_is_long_enough(
    ckpt, tmp_path, monkeypatch, failing_compile, caplog
):
    source = tmp_path / "in.jsonl"
    source.write_text(LINES)
    off = runner.invoke(app, ["score", str(ckpt), "--input", str(source), "--compile", "off"])
    with caplog.at_level(logging.WARNING, logger="vhctl"):
        short = runner.invoke(app, ["score", str(ckpt), "--input", str(source)])  # auto: 40 lines never pay
    assert short.exit_code == 0 and not [r for r in caplog.records if r.name == "vhctl"]
    monkeypatch.setitem(compiled.COMPILE_COST_TOKENS, "cpu", 0)
    with caplog.at_level(logging.WARNING, logger="vhctl"):  # a free compile that saves nothing: still eager
        free = runner.invoke(app, ["score", str(ckpt), "--input", str(source)])
    assert free.exit_code == 0 and not [r for r in caplog.records if r.name == "vhctl"]
    monkeypatch.setitem(compiled.COMPILED_TIME_FRACTION, "cpu", 0.5)  # now any file is worth a compile
    with caplog.at_level(logging.WARNING, logger="vhctl"):
        # stdin, unknown length: not before it has seen enough tokens
        stdin = runner.invoke(app, ["score", str(ckpt)], input=LINES)
        assert not [r for r in caplog.records if r.name == "vhctl"]
        long = runner.invoke(app, ["score", str(ckpt), "--input", str(source)])
    warned = [r.getMessage() for r in caplog.records if r.name == "vhctl"]
    assert long.exit_code == 0 and len(warned) == 1 and "could not compile" in warned[0]
    torch.testing.assert_close(torch.tensor(values(long)), torch.tensor(values(off)), atol=1e-5, rtol=0)
    assert values(stdin) == values(off) == values(short)


def test_a_failed_compile_is_one_warning_line_in_a_real_process(ckpt, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(LINES)
    code = (
        "import sys, torch\n"
        "def fail(*args, **kwargs):\n    raise RuntimeError('simulated: no C++ compiler')\n"
        "torch.compile = fail\n"
        "from vhctl.cli.app import app\n"
        "app(sys.argv[1:], prog_name='vhctl')\n"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        [sys.executable, "-c", code, "score", str(ckpt), "--input", str(source), "--compile", "on"],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "compile" in line]
    assert len(warning) == 1 and warning[0].startswith("could not compile"), done.stderr
    assert "Traceback" not in done.stderr
    off = runner.invoke(app, ["score", str(ckpt), "--input", str(source), "--compile", "off"])
    got = [json.loads(line)["value"] for line in done.stdout.splitlines()]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(values(off)), atol=1e-5, rtol=0)
