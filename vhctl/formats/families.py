"""What a model family looks like on disk, asked of transformers without loading any weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vhctl.errors import UnsupportedModelError

__all__ = [
    "LmLayout",
    "base_prefix",
    "causal_class",
    "check_seqcls_score",
    "lm_layout",
    "seqcls_class",
]


def _mapped_class(auto: Any, config: Any, message: str, hint: str) -> Any:
    """The class an auto class maps this config's type to, or an UnsupportedModelError."""
    try:
        return auto._model_mapping[type(config)]
    except KeyError as exc:
        raise UnsupportedModelError(message, hint=hint) from exc


def causal_class(config: Any, *, where: str) -> Any:
    """The ``*ForCausalLM`` class of a config (not instantiated)."""
    from transformers import AutoModelForCausalLM

    return _mapped_class(
        AutoModelForCausalLM, config,
        f"{where} has model type {config.model_type!r}, which transformers has no causal LM class for",
        "this format holds causal language models only",
    )  # fmt: skip


def base_prefix(config: Any, *, where: str) -> str:
    """``base_model_prefix`` of the family: where the causal LM keeps its backbone."""
    prefix = getattr(causal_class(config, where=where), "base_model_prefix", "")
    if not prefix:
        raise UnsupportedModelError(f"{where}: the {config.model_type} classes name no base_model_prefix")
    return str(prefix)


def seqcls_class(config: Any, *, where: str) -> Any:
    """The ``*ForSequenceClassification`` class of a config, if it has a plain ``score`` Linear."""
    from transformers import AutoModelForSequenceClassification

    return _mapped_class(
        AutoModelForSequenceClassification, config,
        f"{where} is a {config.model_type} model, which transformers has no sequence-classification class for",
        "export it with --format trl or --format openrlhf instead",
    )  # fmt: skip


def check_seqcls_score(config: Any, hidden: int, *, where: str) -> str:
    """Check (on the meta device) that the family's classifier is ``score = Linear(hidden, 1, bias=False)``.

    Returns the class name. Some families (T5, BART) classify with a two-layer head instead, which
    a value head cannot become exactly.
    """
    import copy

    cls = seqcls_class(config, where=where)
    cfg = copy.deepcopy(config)
    cfg.num_labels = 1
    with torch.device("meta"):
        model = cls(cfg)
    score = getattr(model, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.in_features != hidden or score.out_features != 1:
        raise UnsupportedModelError(
            f"{where}: {cls.__name__} does not classify with a Linear(hidden={hidden}, 1) named 'score'",
            hint="export it with --format trl instead",
        )
    return str(cls.__name__)


@dataclass
class LmLayout:
    """File-level names of a causal LM's tensors (as ``save_pretrained`` writes them)."""

    expected: set[str] | None
    lm_head: dict[str, tuple[tuple[int, ...], torch.dtype]]


def lm_layout(config: Any, *, where: str) -> LmLayout:
    """The keys a causal LM checkpoint of this config holds, and which of them form the LM head.

    The model is built on the meta device (no memory, no weights). Tied LM heads are not stored,
    so they are absent from both. transformers 5 renames some tensors on save (GPT-NeoX's
    ``lm_head`` is stored as ``embed_out``): names go through its reverse conversion when it has one;
    ``expected`` is None when that is not possible, and the caller then checks less.
    """
    import copy

    cls = causal_class(config, where=where)
    with torch.device("meta"):
        model = cls(copy.deepcopy(config))
    # ``all_tied_weights_keys`` holds the ties in effect; ``_tied_weights_keys`` (older transformers)
    # lists the possible ones, which apply only when the config ties the embeddings.
    tied_attr = getattr(model, "all_tied_weights_keys", None)
    if tied_attr is None and getattr(config, "tie_word_embeddings", True):
        tied_attr = getattr(model, "_tied_weights_keys", None)
    tied = set(tied_attr or [])
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    out_emb = model.get_output_embeddings()
    out_names = {
        f"{name}.{pname}" if name else pname
        for name, module in model.named_modules()
        if module is out_emb and out_emb is not None
        for pname, _ in module.named_parameters(recurse=False)
    }
    head_state = {k: v for k, v in state.items() if k in out_names}
    try:
        from transformers.core_model_loading import revert_weight_conversion

        saved = revert_weight_conversion(model, dict(state))
        saved_head = revert_weight_conversion(model, dict(head_state)) if head_state else {}
        expected: set[str] | None = set(saved)
    except Exception:  # an internal transformers API: fall back to the module names
        saved_head = head_state
        expected = None
    return LmLayout(expected, {k: (tuple(v.shape), v.dtype) for k, v in saved_head.items()})
