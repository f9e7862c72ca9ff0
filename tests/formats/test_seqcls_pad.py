"""``export --format seqcls`` reads the token ``vhctl score`` reads, also for texts that end in EOS.

transformers' classifier scores the last token that is not the pad token, and TRL's GRPO loads a
reward model by path with a tokenizer that pads with EOS when it has no pad token. The oracle is
TRL 1.12's own ``GRPOTrainer._calculate_rewards`` on the exported folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.grpo import grpo_trainer
from helpers.tiny_models import tiny_config, tiny_tokenizer
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.errors import UnsupportedModelError
from vhctl.formats.padding import NEW_PAD_TOKEN
from vhctl.ops.export import export_checkpoint
from vhctl.ops.wrap import wrap_model

EOS = "<|endoftext|>"
PROMPTS = ["Q: what is 2+2?", "The cat", "Tell me a story about a dog"]
COMPLETIONS = [" 4" + EOS, " sat on the mat." + EOS + EOS, " Once upon a time" + EOS]


def _checkpoint(tmp: Path, vocab: int, extra_special: str | None = None) -> Path:
    """A vhctl checkpoint of a tiny GPT-2 whose tokenizer pads with EOS; ``vocab`` rows of embedding."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("gpt2")
    config.vocab_size = vocab
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp / "base")
    tokenizer = tiny_tokenizer()
    if extra_special is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": [extra_special]})
    tokenizer.save_pretrained(tmp / "base")
    wrap_model(str(tmp / "base"), tmp / "ck", init="normal", std=0.5, seed=2)
    return tmp / "ck"


def _vhctl_score(ckpt: Path, texts: list[str]) -> torch.Tensor:
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    result = CliRunner().invoke(app, ["score", str(ckpt), "--device", "cpu"], input=lines)
    assert result.exit_code == 0, result.output
    return torch.tensor([json.loads(line)["value"] for line in result.stdout.splitlines()])


def _trl_rewards(tmp: Path, folder: Path) -> torch.Tensor:
    """What TRL's GRPOTrainer computes with ``reward_funcs=<folder>`` (its own loading and padding)."""
    trainer = grpo_trainer(tmp, str(folder), PROMPTS)
    inputs = [{"prompt": p} for p in PROMPTS]
    rewards = trainer._calculate_rewards(inputs, PROMPTS, COMPLETIONS, [[] for _ in PROMPTS])
    return rewards[:, 0].detach().cpu()


@pytest.mark.parametrize(
    ("vocab", "special", "expected"),
    [(1032, None, NEW_PAD_TOKEN), (1032, "<|finetune_right_pad_id|>", "<|finetune_right_pad_id|>")],
)
def test_pad_of_its_own_makes_trl_read_what_vhctl_scores(
    tmp_path: Path, vocab: int, special: str | None, expected: str
) -> None:
    ckpt = _checkpoint(tmp_path, vocab, special)
    out = tmp_path / "rm"
    result = export_checkpoint(ckpt, "seqcls", out)
    assert any(expected in note for note in result.notes), result.notes
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.pad_token == expected and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.pad_token_id < vocab  # a row of the embedding matrix, which is unchanged

    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    expected_values = _vhctl_score(ckpt, texts)
    got = _trl_rewards(tmp_path, out)
    assert torch.allclose(got, expected_values, atol=1e-5, rtol=0), (got, expected_values)

    # The same model exported with EOS kept as its pad: TRL reads another token (what the pad fixes).
    kept = export_checkpoint(ckpt, "seqcls", tmp_path / "rm-eos", pad_token="eos")
    assert any("the token before its trailing EOS" in note for note in kept.notes), kept.notes
    early = _trl_rewards(tmp_path / "again", tmp_path / "rm-eos")
    assert (early - expected_values).abs().min() > 1e-3, (early, expected_values)


def test_pad_eos_without_a_spare_token_is_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, 1024)  # the tokenizer fills the embedding: no spare row, no other special
    with pytest.raises(UnsupportedModelError, match="pads with its EOS token") as info:
        export_checkpoint(ckpt, "seqcls", tmp_path / "rm")
    assert "--pad-token eos" in (info.value.hint or "")
    assert "token before its trailing EOS" in str(info.value)
    assert not (tmp_path / "rm").exists()
    result = CliRunner().invoke(app, ["export", str(ckpt), "-f", "seqcls", "-o", str(tmp_path / "rm")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--pad-token eos" in result.output
    bad = CliRunner().invoke(
        app, ["export", str(ckpt), "-f", "trl", "-o", str(tmp_path / "t"), "--pad-token", "eos"]
    )
    assert bad.exit_code == 2 and "--pad-token applies to --format seqcls" in bad.output
