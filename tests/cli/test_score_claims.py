"""What the README promises about ``vhctl score``'s output, tested (issue #13, item 8).

- Non-finite numbers are written as ``null`` (strict JSON: no ``NaN`` or ``Infinity``), for
  ``value`` and for every entry of ``values``, exactly where the model's value is not finite.
- Ctrl-C (SIGINT) ends a running ``score`` with exit code 130, one line on stderr and no
  traceback; every line written before it is a whole JSON object.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers.formats import set_head
from helpers.tiny_models import tiny_tokenizer
from helpers.torchrun import torchrun_env
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.cli.app import app

runner = CliRunner()
LINES = ["The cat sat on the mat.", "hello", "zz top", "a b c d e f g", "Numbers: 1 2 3 4 5"]


def _strict(text: str) -> object:
    """``json.loads`` that refuses NaN and Infinity (which Python's json would accept)."""

    def refuse(name: str) -> object:
        raise AssertionError(f"{name} in the output is not JSON")

    return json.loads(text, parse_constant=refuse)


def _plain_values(ckpt: Path, line: str) -> list[float]:
    """The model's values for one text line, from the plain forward (no scorer)."""
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).eval()
    ids = torch.tensor([tiny_tokenizer()(line)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids))[2][0].tolist()


@pytest.mark.parametrize("head", ["overflow", "nan-bias"])
def test_non_finite_values_are_written_as_null(tiny_ckpt: Path, tmp_path: Path, head: str) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ckpt)
    if head == "overflow":
        # One weight near float32's limit: w * h overflows to +-inf where |h| > ~1.1, stays finite elsewhere.
        weight = torch.zeros(1, 64)
        weight[0, 0] = 3e38
        set_head(ckpt, weight=weight, bias=0.0)
    else:
        set_head(ckpt, bias=math.nan)
    result = runner.invoke(
        app, ["score", str(ckpt), "--per-token"], input="".join(f"{line}\n" for line in LINES)
    )
    assert result.exit_code == 0, result.output
    rows = [_strict(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(LINES)
    nulls = finite = 0
    for line, row in zip(LINES, rows, strict=True):
        assert isinstance(row, dict)
        expected = _plain_values(ckpt, line)
        assert len(row["values"]) == len(expected)
        for got, want in zip(row["values"], expected, strict=True):
            if math.isfinite(want):
                finite += 1
                assert got is not None and math.isclose(got, want, rel_tol=1e-5), (line, got, want)
            else:
                nulls += 1
                assert got is None, (line, got, want)
        assert row["value"] == row["values"][-1] or (row["value"] is None and row["values"][-1] is None)
    assert nulls > 0
    if head == "overflow":
        assert finite > 0  # a mix: nulls exactly where the model's value is not finite
    else:
        assert finite == 0 and all(row["value"] is None for row in rows)


def _produce(proc: subprocess.Popen, pause: float, stop: threading.Event) -> None:
    """A slow producer: one JSON line every ``pause`` seconds until stopped (or the pipe closes)."""
    assert proc.stdin is not None
    i = 0
    try:
        while not stop.is_set():
            proc.stdin.write(
                json.dumps({"id": i, "text": f"sample number {i} " * (1 + i % 7)}).encode() + b"\n"
            )
            i += 1
            time.sleep(pause)
    except (BrokenPipeError, ValueError, OSError):
        pass


@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["waiting-for-input", "busy-scoring"])
def test_ctrl_c_exits_130_with_whole_lines_and_no_traceback(tiny_ckpt: Path, pause: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vhctl", "score", str(tiny_ckpt), "--stream"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=torchrun_env(), bufsize=0,
        start_new_session=True,
    )  # fmt: skip
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(proc, pause, stop), daemon=True)
    producer.start()
    out = b""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while out.count(b"\n") < 5:  # it is running: results have come
            assert time.monotonic() < deadline, "no results"
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"score ended early: {proc.stderr.read().decode() if proc.stderr else ''}"
                out += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out += rest
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "Error: interrupted", stderr
    assert out.endswith(b"\n"), "the last line was cut"
    rows = [_strict(line) for line in out.decode().splitlines()]
    assert [row["id"] for row in rows] == list(range(len(rows)))  # type: ignore[index]
    assert all(isinstance(row["value"], float) for row in rows)  # type: ignore[index]
