"""DeepSpeed-Chat reward / critic models: import only (``rwtranrsformer.*`` + ``v_head.weight``)."""

from __future__ import annotations

from vhctl.formats import keymaps as km
from vhctl.formats.base import FolderFacts, FormatSpec
from vhctl.formats.layout import ForeignLayout

__all__ = ["FORMAT", "detect"]


def detect(facts: FolderFacts) -> ForeignLayout | None:
    """A DeepSpeed-Chat model keeps its backbone under ``rwtranrsformer.`` (sic) and a bias-free head."""
    if km.DEEPSPEED_CHAT_HEAD_WEIGHT in facts.keys and any(
        k.startswith(km.DEEPSPEED_CHAT_PREFIXES) for k in facts.keys
    ):
        return ForeignLayout(
            format=km.DEEPSPEED_CHAT, title=FORMAT.title, folder=facts.folder, config=facts.config,
            weights=facts.weights, head_weight_key=km.DEEPSPEED_CHAT_HEAD_WEIGHT,
        )  # fmt: skip
    return None


FORMAT = FormatSpec(name=km.DEEPSPEED_CHAT, title="a DeepSpeed-Chat", detect=detect)
