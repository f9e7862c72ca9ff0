"""``vhctl score``: JSONL out in input order, stdin or file, errors, --skip-bad, --per-token, --reward."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import make_reward_adapter, tiny_tokenizer
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.cli.app import app

runner = CliRunner()

INPUT = (
    "a plain text line\n"
    '{"id": "p1", "prompt": "the fox", "response": " jumps"}\n'
    "\n"
    '{"id": 7, "prompt": "the fox", "response": " sleeps over the dog"}\n'
    '{"id": null, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


def run(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "ck"
    result = run("wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def expected_value(ckpt, ids: list[int]) -> float:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).eval()
    with torch.no_grad():
        _, _, values = model(torch.tensor([ids]))
    return values[0, -1].item()


def test_scores_stdin_in_order_with_ids(ckpt) -> None:
    result = run("score", str(ckpt), input=INPUT)
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert len(out) == 4
    assert "id" not in out[0] and out[1]["id"] == "p1" and out[2]["id"] == 7 and out[3]["id"] is None
    assert all(isinstance(r["value"], float) and set(r) <= {"id", "value"} for r in out)
    tok = tiny_tokenizer()
    ids = (
        tok("the fox", add_special_tokens=False)["input_ids"]
        + tok(" jumps", add_special_tokens=False)["input_ids"]
    )
    assert abs(out[1]["value"] - expected_value(ckpt, ids)) <= 1e-5  # measured: 2.4e-7 in float32
    assert "scored 4 line(s)" in result.stderr and "prefix sharing" in result.stderr


def test_input_file_per_token_and_max_length(ckpt, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(INPUT + '{"text": "' + "word " * 50 + '"}\n')
    result = run("score", str(ckpt), "--input", str(source), "--per-token", "--max-length", "8", "-b", "2")
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert len(out) == 5
    for record in out:
        assert record["values"][-1] == record["value"] and len(record["values"]) <= 8
    assert len(out[-1]["values"]) == 8
    assert "kept only their end" in result.stderr


def test_same_values_without_prefix_sharing(ckpt) -> None:
    shared = lines(run("score", str(ckpt), input=INPUT))
    plain = lines(run("score", str(ckpt), "--no-prefix-sharing", input=INPUT))
    # measured: 3.6e-7 in float32
    assert [r["value"] for r in shared] == pytest.approx([r["value"] for r in plain], abs=1e-5)


def test_bad_line_fails_after_the_lines_before(ckpt) -> None:
    result = run("score", str(ckpt), input="one\ntwo\n{broken\nfour\n")
    assert result.exit_code == 1
    assert len(lines(result)) == 2
    assert "Error: line 3: invalid JSON" in result.stderr and "Traceback" not in result.stderr


def test_skip_bad_writes_error_records(ckpt) -> None:
    data = b'one\n{"id": "x", "txt": "typo"}\n\xff\xfe\nfour\n'
    result = run("score", str(ckpt), "--skip-bad", input=data)
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert [sorted(r) for r in out] == [["value"], ["error", "id", "line"], ["error", "line"], ["value"]]
    assert out[1]["line"] == 2 and "accepted fields" in out[1]["error"] and out[2]["line"] == 3
    assert "2 bad line(s)" in result.stderr


def test_empty_input_writes_nothing(ckpt) -> None:
    result = run("score", str(ckpt), input="")
    assert result.exit_code == 0 and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--input", "missing.txt"), "not found"),
        (("--device", "tpu"), "invalid device"),
        (("--dtype", "float8"), "invalid dtype"),
        (("--batch-size", "0"), "--batch-size"),
        (("stray",), "--input stray"),
        (("--reward",), "no reward adapter"),
    ],
)
def test_usage_errors_exit_2(ckpt, args, needle) -> None:
    result = run("score", str(ckpt), *args, input="x\n")
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(ckpt) -> None:
    result = run("score", str(ckpt), "--device", "cuda:0", input="x\n")
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_reward_from_an_attached_adapter(tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    ck = tmp_path / "ck"
    assert run("wrap", "vhctl:tiny", "--out", str(ck), "--init", "normal", "--seed", "1").exit_code == 0
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", ck, seed=3)
    attached = run("attach-reward-adapter", str(ck), str(adapter), "--name", "judge")
    assert attached.exit_code == 0, attached.output
    plain = lines(run("score", str(ck), input=INPUT))
    for args in (("--reward",), ("--reward-adapter", "judge"), ("--reward-adapter", "judge", "--per-token")):
        result = run("score", str(ck), *args, input=INPUT)
        assert result.exit_code == 0, result.output
        out = lines(result)
        assert [r["value"] for r in out] == pytest.approx([r["value"] for r in plain], abs=1e-5)
        assert all(isinstance(r["reward"], float) for r in out)
    reference = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(str(ck), num_labels=1), str(adapter)
    ).eval()
    tok = tiny_tokenizer()
    with torch.no_grad():
        expected = reference(torch.tensor([tok("a plain text line")["input_ids"]])).logits[0, 0].item()
    assert abs(out[0]["reward"] - expected) <= 1e-5  # measured: 1.5e-8 in float32
    wrong = run("score", str(ck), "--reward-adapter", "nope", input=INPUT)
    assert wrong.exit_code == 2 and "judge" in wrong.stderr


@pytest.mark.slow
def test_memory_stays_flat_for_long_inputs(ckpt, tmp_path) -> None:
    """Peak RSS for 100k lines is within 10% of 10k lines (the input is streamed, never held)."""
    import os
    import subprocess
    import sys

    code = (
        "import resource, sys\n"
        "from vhctl.cli.app import app\n"
        "try:\n    app(sys.argv[1:], prog_name='vhctl')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "sys.stderr.write(f'RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
        "sys.exit(code)\n"
    )
    peaks = {}
    for count in (10_000, 100_000):
        source = tmp_path / f"in{count}.txt"
        source.write_text("".join(f'{{"id": {i}, "text": "line {i} of the input"}}\n' for i in range(count)))
        done = subprocess.run(
            [sys.executable, "-c", code, "score", str(ckpt), "--input", str(source)],
            capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("\n") == count
        peaks[count] = int(done.stderr.rsplit("RSS ", 1)[1].split()[0])
    assert peaks[100_000] <= peaks[10_000] * 1.10, peaks
