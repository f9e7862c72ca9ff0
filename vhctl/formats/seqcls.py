"""transformers ``*ForSequenceClassification`` with ``num_labels=1``: ``{base}.*`` plus ``score`` (1, hidden).

What vLLM's pooling runner and ``AutoModelForSequenceClassification`` load as a reward model.
"""

from __future__ import annotations

from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import keymaps as km
from vhctl.formats.base import ExportJob, FolderFacts, FormatSpec
from vhctl.formats.exporting import (
    finish_headless,
    restored_config,
    start_config,
    write_headless,
)
from vhctl.formats.families import check_seqcls_score
from vhctl.formats.layout import ForeignLayout
from vhctl.formats.padding import apply_pad, plan_pad

__all__ = ["FORMAT", "detect", "export"]


def detect(facts: FolderFacts) -> ForeignLayout | None:
    """A ``score.weight`` in the weights; a classifier whose head is something else is refused."""
    if km.SEQCLS_HEAD_WEIGHT in facts.keys:
        bias_key = km.SEQCLS_HEAD_BIAS if km.SEQCLS_HEAD_BIAS in facts.keys else None
        return ForeignLayout(
            format=km.SEQCLS, title=FORMAT.title, folder=facts.folder, config=facts.config, weights=facts.weights,
            head_weight_key=km.SEQCLS_HEAD_WEIGHT, head_bias_key=bias_key,
        )  # fmt: skip
    if any(a.endswith(km.SEQCLS_ARCH_SUFFIX) for a in facts.archs):
        raise UnsupportedModelError(
            f"{facts.folder} is a {facts.archs[0]} whose classifier is not a single 'score' layer",
            hint="vhctl imports sequence classifiers with a Linear 'score' head (causal LMs: Llama, GPT-2...)",
        )
    return None


def export(job: ExportJob) -> None:
    """Write ``job`` as a ``*ForSequenceClassification`` model with one label."""
    where = job.result.source
    cls_name = check_seqcls_score(job.config, job.hidden, where=where)
    restored = restored_config(job, km.SEQCLS)
    pad = plan_pad(job.src, job.config, job.pad_token, where=where)
    done = write_headless(job, km.SEQCLS, km.head_weight_key(km.SEQCLS))
    cfg = start_config(job, done, restored)
    cfg["architectures"] = [cls_name]
    cfg["id2label"] = (
        {"0": "LABEL_0"} if not isinstance(restored.get("id2label"), dict) else restored["id2label"]
    )
    cfg["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
    if len(cfg["id2label"]) != 1:
        raise CheckpointError(f"{where}: the recorded id2label has {len(cfg['id2label'])} labels, not 1")
    cfg.pop("num_labels", None)
    notes = [pad.note] if pad.note else []
    if pad.pad_id is not None:
        cfg["pad_token_id"] = pad.pad_id
    elif cfg.get("pad_token_id") is None:
        notes.append(
            "config.json has no pad_token_id: transformers' classifier then scores one text per batch "
            "(give the tokenizer a pad token to batch)"
        )
    finish_headless(job, km.SEQCLS, cfg, done, notes)
    apply_pad(pad, job.dst)


FORMAT = FormatSpec(
    name=km.SEQCLS,
    title="a sequence-classification",
    detect=detect,
    export=export,
    hint="AutoModelForSequenceClassification.from_pretrained('{out}')  (or vLLM's pooling runner)",
)
