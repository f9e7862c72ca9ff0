"""Whatever goes wrong inside a model, the CLI prints one line (what failed, -v for the traceback).

A model whose forward raises, or whose config makes transformers fail while building it, gives
``Error: the model failed while <doing>: <Type>: <first line> (run with -v for the traceback)`` and
exit 1 from score, wrap, make-ref and export; ``-v`` prints the traceback. An exception raised by
vhctl's own code is still a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import save_tiny_model, tiny_tokenizer
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.constants import CONFIG_NAME
from vhctl.errors import ModelError

REPO = Path(__file__).resolve().parents[2]
HINT = "(run with -v for the traceback)"
runner = CliRunner()

# Runs the CLI with GPT-2's backbone forward replaced by one that raises (vhctl:tiny is a GPT-2).
_BROKEN_FORWARD = """
import sys
import transformers.models.gpt2.modeling_gpt2 as gpt2

def forward(self, *args, **kwargs):
    raise RuntimeError("the kernel exploded\\nsecond line of detail")

gpt2.GPT2Model.forward = forward
from vhctl.cli.app import main
sys.argv = ["vhctl", *sys.argv[1:]]
main()
"""


def _broken_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", _BROKEN_FORWARD, *args], capture_output=True, text=True, env=env, timeout=120
    )


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_score_prints_one_line_when_the_forward_raises(tiny_ckpt: Path, tmp_path: Path) -> None:
    lines = tmp_path / "in.jsonl"
    lines.write_text(
        '{"text": "hello there"}\n{"prompt": "a b", "response": " c"}\n{"prompt": "a b", "response": " d"}\n'
    )
    result = _broken_cli("score", str(tiny_ckpt), "-i", str(lines))
    assert result.returncode == 1, result.stderr
    assert _one_line(result.stderr) == (
        f"Error: the model failed while scoring: RuntimeError: the kernel exploded {HINT}"
    )
    assert result.stdout == ""


def test_score_verbose_shows_the_model_traceback(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.models.gpt2.modeling_gpt2 as gpt2

    def forward(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the kernel exploded\nsecond line of detail")

    monkeypatch.setattr(gpt2.GPT2Model, "forward", forward)
    (tmp_path / "in.txt").write_text("hello there\n")
    verbose = runner.invoke(app, ["-v", "score", str(tiny_ckpt), "-i", str(tmp_path / "in.txt")])
    assert verbose.exit_code == 1 and isinstance(verbose.exception, SystemExit)
    assert "Traceback" in verbose.stderr and "second line of detail" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == (
        f"Error: the model failed while scoring: RuntimeError: the kernel exploded {HINT}"
    )


def test_the_scorer_raises_model_error_with_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.tiny_models import make_tiny_model

    from vhctl import AutoModelForCausalLMWithValueHead
    from vhctl.scoring import Scorer

    model = AutoModelForCausalLMWithValueHead.from_pretrained(make_tiny_model("llama")).eval()
    backbone = model.pretrained_model.base_model

    def forward(*args: object, **kwargs: object) -> None:
        raise ValueError("bad shapes")

    monkeypatch.setattr(backbone, "forward", forward)
    with pytest.raises(ModelError) as caught:
        Scorer(model, tiny_tokenizer()).score_texts(["hello"])
    assert str(caught.value) == f"the model failed while scoring: ValueError: bad shapes {HINT}"
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.fixture()
def bad_activation(tmp_path: Path) -> Path:
    """A wrapped GPT-2 whose config names an activation transformers does not have."""
    source = save_tiny_model("gpt2", tmp_path / "source")
    config = json.loads((source / CONFIG_NAME).read_text())
    config["activation_function"] = "no_such_activation"
    (source / CONFIG_NAME).write_text(json.dumps(config))
    checkpoint = tmp_path / "ck"
    result = runner.invoke(app, ["wrap", str(source), "--out", str(checkpoint)])  # copies, builds nothing
    assert result.exit_code == 0, result.output
    return checkpoint


@pytest.mark.parametrize(
    ("args", "doing"),
    [
        (["make-ref", "{ck}", "--shared", "1"], "making the reference"),
        (["export", "{ck}", "--format", "seqcls", "--out", "{ck}-seqcls"], "exporting"),
    ],
)
def test_a_model_that_cannot_be_built_is_one_line(bad_activation: Path, args: list[str], doing: str) -> None:
    argv = [arg.format(ck=bad_activation) for arg in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert _one_line(result.stderr) == (
        f"Error: the model failed while {doing}: KeyError: 'no_such_activation' {HINT}"
    )
    verbose = runner.invoke(app, ["-v", *argv])
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_wrap_of_a_config_transformers_rejects_is_one_line(tmp_path: Path) -> None:
    source = save_tiny_model("llama", tmp_path / "source")
    config = json.loads((source / CONFIG_NAME).read_text())
    config["num_attention_heads"] = 5  # hidden size 32 is not a multiple of 5
    (source / CONFIG_NAME).write_text(json.dumps(config))
    result = runner.invoke(app, ["wrap", str(source), "--out", str(tmp_path / "ck")])
    if result.exit_code == 0:
        pytest.skip("this transformers does not check a config's head count when loading it")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    line = _one_line(result.stderr)
    assert line.startswith("Error: the model failed while wrapping: ") and line.endswith(HINT)
    assert not (tmp_path / "ck").exists()


def test_a_bug_in_vhctl_keeps_its_traceback(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the model's code: an exception from vhctl itself (here a stand-in) is not turned into a line."""
    import vhctl.ops.make_ref as reference

    def make_reference(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a vhctl bug")

    monkeypatch.setattr(reference, "make_reference", make_reference)
    result = runner.invoke(app, ["make-ref", str(tiny_ckpt), "--shared", "1"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_out_of_memory_from_torch_keeps_the_memory_advice() -> None:
    from vhctl.errors import describe_error as describe
    from vhctl.errors import model_failures

    with pytest.raises(MemoryError) as caught, model_failures("scoring"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert describe(caught.value) == ("out of memory (try a smaller --batch-size or --max-length)", 1)
