"""``vhctl.integrations.trl``: a reward function TRL 1.12's real GRPOTrainer trains with.

The rewards TRL receives must be ``vhctl score``'s on the same records (1e-5); the oracle is the
command itself. Also run against a real ``vhctl serve`` (the reward function built from its URL).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.grpo import grpo_trainer
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.errors import InputError, ServerError, UsageError
from vhctl.integrations.trl import VhctlReward, records_for, trl_reward

STANDARD = ["Q: what is 2+2?", "The cat sat", "Tell me a story", "Why is the sky blue?"]
CHAT = [[{"role": "user", "content": p}] for p in STANDARD]


class Spy:
    """Passes TRL's calls to the reward function and keeps what went in and came out."""

    def __init__(self, reward: VhctlReward) -> None:
        self.reward = reward
        self.__name__ = reward.__name__
        self.calls: list[tuple[list[Any], list[Any], list[float | None], set[str]]] = []

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        rewards = self.reward(prompts=prompts, completions=completions, **kwargs)
        self.calls.append((list(prompts), list(completions), rewards, set(kwargs)))
        return rewards


def _vhctl_score(ckpt: Path, records: list[dict[str, Any]]) -> list[float]:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    result = CliRunner().invoke(app, ["score", str(ckpt), "--device", "cpu"], input=lines)
    assert result.exit_code == 0, result.output
    return [json.loads(line)["value"] for line in result.stdout.splitlines()]


def _check_against_score(ckpt: Path, spy: Spy) -> None:
    assert len(spy.calls) == 2  # one generation batch per step
    for prompts, completions, rewards, kwargs in spy.calls:
        assert "completion_ids" in kwargs and "trainer_state" in kwargs
        if isinstance(prompts[0], str):
            records = [{"prompt": p, "response": c} for p, c in zip(prompts, completions, strict=True)]
        else:
            records = [{"messages": p + c} for p, c in zip(prompts, completions, strict=True)]
        expected = _vhctl_score(ckpt, records)
        assert all(isinstance(r, float) for r in rewards)
        assert max(abs(a - b) for a, b in zip(rewards, expected, strict=True)) <= 1e-5, (rewards, expected)  # type: ignore[operator]


def _train(tmp_path: Path, spy: Spy, prompts: list[Any]) -> Any:
    trainer = grpo_trainer(tmp_path, spy, prompts)
    started = time.perf_counter()
    trainer.train()
    print(f"GRPOTrainer: 2 steps in {time.perf_counter() - started:.1f} s")
    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if f"rewards/{spy.__name__}/mean" in entry]
    assert len(logged) == 2, trainer.state.log_history
    return trainer


def test_grpo_trains_with_the_reward_of_a_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    reward = trl_reward(str(tiny_ckpt), device="cpu")
    assert reward.__name__ == "vhctl_reward"
    spy = Spy(reward)
    _train(tmp_path, spy, STANDARD)
    _check_against_score(tiny_ckpt, spy)
    assert reward.stats is not None and reward.stats.shared_prompts >= 4  # 2 completions per prompt, 2 steps


def test_grpo_trains_with_the_reward_of_a_server_conversational(tiny_ckpt: Path, tmp_path: Path) -> None:
    from helpers.servekit import ServeProcess

    server = ServeProcess(tiny_ckpt)
    try:
        url = server.wait_ready()
        reward = trl_reward(url, name="rm_server")
        spy = Spy(reward)
        _train(tmp_path, spy, CHAT)
        _check_against_score(tiny_ckpt, spy)
        assert isinstance(spy.calls[0][1][0], list)  # TRL passed conversational completions
        with pytest.raises(ServerError, match="400 record 0: nothing to score") as info:
            reward(prompts=[""], completions=[""])  # the server's reason comes through
        assert info.value.status == 400
    finally:
        server.kill()


def test_messages_share_their_prompt_and_keep_their_values(tiny_ckpt: Path) -> None:
    reward = trl_reward(str(tiny_ckpt), device="cpu")
    answers = [[{"role": "assistant", "content": c}] for c in (" yes", " no, not at all", " maybe")]
    prompts = [CHAT[0]] * 3
    got = reward(prompts=prompts, completions=answers)
    assert reward.stats is not None and reward.stats.shared_prompts == 2  # 3 answers, prompt run once
    plain = _vhctl_score(tiny_ckpt, [{"messages": p + c} for p, c in zip(prompts, answers, strict=True)])
    assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) <= 1e-5  # type: ignore[operator]


def test_bad_inputs_are_one_clear_error(tiny_ckpt: Path) -> None:
    with pytest.raises(InputError, match="completion 1"):
        records_for(["a", ["not", "a", "str"]], ["b", "c"])
    with pytest.raises(InputError, match="2 prompts for 1 completions"):
        records_for(["a", "b"], ["c"])
    with pytest.raises(UsageError, match="normalize"):
        trl_reward("http://127.0.0.1:9", normalize=True)
    down = trl_reward("http://127.0.0.1:9", retries=1, retry_wait=0.01)
    with pytest.raises(ServerError, match="could not be reached"):
        down(prompts=["a"], completions=["b"])
