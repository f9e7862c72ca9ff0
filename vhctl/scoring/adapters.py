"""Which PEFT adapter is active for each pass: the policy's for values, the reward adapter's for rewards.

A value-head checkpoint may carry a reward adapter beside (or instead of) a policy adapter. Values
always come from the policy; a reward pass switches to the reward adapter and back, whatever
happens inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vhctl.errors import UsageError
from vhctl.scoring.model_parts import ModelParts

__all__ = ["check_reward", "policy_adapter", "reward_adapter"]


def check_reward(model: Any, parts: ModelParts, reward: bool | str) -> str:
    """The name of the reward adapter to score with (``True``: the model's ``rm_adapter_name``).

    Raises:
        UsageError: the model has no reward adapter, or not one of that name.
    """
    if (
        not parts.is_peft
        or not getattr(model, "supports_rm_adapter", False)
        or getattr(model, "score", None) is None
    ):
        raise UsageError(
            "a reward was asked for, but this checkpoint has no reward adapter",
            hint="add one with `vhctl attach-reward-adapter CKPT ADAPTER`",
        )
    name = model.rm_adapter_name if reward is True else str(reward)
    loaded = list(parts.pm.peft_config)
    if name not in loaded or name != model.rm_adapter_name:
        raise UsageError(
            f"no reward adapter named {name!r} is loaded (reward adapter: {model.rm_adapter_name!r}, "
            f"adapters: {', '.join(loaded)})",
            hint=f"use --reward {model.rm_adapter_name}",
        )
    return name


def policy_adapter(model: Any, parts: ModelParts) -> contextlib.AbstractContextManager[Any]:
    """Values come from the policy: with no policy adapter loaded (only a reward one), the base model."""
    if parts.is_peft and getattr(model, "policy_adapter_name", "default") not in parts.pm.peft_config:
        return parts.pm.disable_adapter()
    return contextlib.nullcontext()


@contextlib.contextmanager
def reward_adapter(model: Any, parts: ModelParts, name: str) -> Iterator[None]:
    """Make adapter ``name`` the active one inside the block; the one active before is restored."""
    previous = _active_adapter(parts.pm, model)
    parts.pm.set_adapter(name)
    try:
        yield
    finally:
        parts.pm.set_adapter(previous)


def _active_adapter(pm: Any, model: Any) -> str:
    active = getattr(pm, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    return str(active or getattr(model, "policy_adapter_name", "default"))
