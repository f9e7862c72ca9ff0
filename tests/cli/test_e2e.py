"""End to end: the installed ``vhctl`` in a shell pipeline, checked against the library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LINES = [
    "The cat sat on the mat.",
    '{"id": "a", "prompt": "Q: what is 2+2?", "response": " 4"}',
    '{"id": "b", "prompt": "Q: what is 2+2?", "response": " five, I think"}',
    '{"id": 3, "text": "A line given as JSON."}',
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    "Another plain line, a bit longer than the first one, to vary the lengths in the batch.",
]


def _vhctl() -> str:
    candidate = Path(sys.executable).with_name("vhctl")
    found = str(candidate) if candidate.exists() else shutil.which("vhctl")
    if not found:
        pytest.skip("the vhctl console script is not installed")
    return found


def _expected_values(ckpt: Path) -> list[float]:
    """Each line scored alone through the wrapper's plain forward (TRL's way), no batching."""
    from transformers import AutoTokenizer

    from vhctl.modeling import load_checkpoint

    model = load_checkpoint(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    # The tiny tokenizer adds no special tokens (GPT-2 style), so prompt + response is a plain concatenation.
    assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]
    out = []
    for line in LINES:
        if line.startswith("{"):
            record = json.loads(line)
            if "prompt" in record:
                ids = (
                    tok(record["prompt"], add_special_tokens=False)["input_ids"]
                    + tok(record["response"], add_special_tokens=False)["input_ids"]
                )
            elif "messages" in record:
                ids = tok(
                    tok.apply_chat_template(record["messages"], tokenize=False), add_special_tokens=False
                )["input_ids"]
            else:
                ids = tok(record["text"])["input_ids"]
        else:
            ids = tok(line)["input_ids"]
        with torch.no_grad():
            out.append(model(torch.tensor([ids]))[2][0, -1].item())
    return out


def test_shell_pipeline_wrap_make_ref_score_validate(tmp_path) -> None:
    vhctl = _vhctl()
    ckpt = tmp_path / "demo"
    script = (
        f"set -euo pipefail\n"
        f"'{vhctl}' wrap vhctl:tiny --out '{ckpt}' --init normal --seed 0\n"
        f"'{vhctl}' make-ref '{ckpt}' --shared 2\n"
        f"printf '%s\\n' "
        + " ".join("'" + line.replace("'", "'\\''") + "'" for line in LINES)
        + f" | '{vhctl}' score '{ckpt}' --batch-size 2 | cat > '{tmp_path}/out.jsonl'\n"
        f"'{vhctl}' validate '{ckpt}' --deep\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(results) == len(LINES)
    assert [r.get("id") for r in results] == [None, "a", "b", 3, None, None]
    expected = _expected_values(ckpt)
    for got, want in zip(results, expected, strict=True):
        assert abs(got["value"] - want) <= 1e-5, (got, want)  # measured: 3.9e-7 in float32
    assert "valid" in done.stderr
