"""TRL 1.12's real ``GRPOTrainer`` on tiny models, on the CPU, for the reward tests (no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.tiny_models import save_tiny_model


def grpo_config(out: Path, **overrides: Any) -> Any:
    """A GRPOConfig that trains 2 steps of 2 prompts x 2 completions of at most 6 tokens, on the CPU."""
    from trl import GRPOConfig

    settings: dict[str, Any] = dict(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=6, use_vllm=False, use_cpu=True, bf16=False, report_to="none",
        logging_steps=1, save_strategy="no", learning_rate=1e-4, seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    settings.update(overrides)
    return GRPOConfig(**settings)


def grpo_trainer(tmp: Path, reward_funcs: Any, prompts: list[Any], **overrides: Any) -> Any:
    """A GRPOTrainer with the tiny GPT-2 policy (shipped tokenizer) on a dataset of ``prompts``."""
    from datasets import Dataset
    from trl import GRPOTrainer

    policy = save_tiny_model("gpt2", tmp / "policy", seed=1)
    return GRPOTrainer(
        model=str(policy),
        reward_funcs=reward_funcs,
        args=grpo_config(tmp / "grpo-out", **overrides),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
