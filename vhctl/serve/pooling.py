"""vLLM's pooling API, in the shapes vLLM documents: ``POST /classify`` and ``GET /v1/models``.

veRL's reward loop and other clients written for a vLLM reward server (``vllm serve RM --runner
pooling``) send ``{"model", "input": str | [str] | [ids] | [[ids]], "use_activation": bool}`` and
read ``data[i].probs``. A vhctl model has one output, the value (or the reward of its adapter):
``probs`` is ``[value]``, or ``[sigmoid(value)]`` with the activation on, as vLLM does for a
classifier with one label; ``use_activation`` left out means on, vLLM's default.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from vhctl.io.records import Record
from vhctl.serve.bodies import BadRequest, record_of

__all__ = ["LABEL", "ClassifyRequest", "classify_request", "classify_response", "models_response"]

LABEL = "LABEL_0"  # transformers' name of a one-label classifier's label (what export --format seqcls writes)


@dataclass
class ClassifyRequest:
    """The records of a ``/classify`` request and whether to apply the activation."""

    records: list[Record]
    use_activation: bool


def _flag(data: dict[str, Any], *names: str) -> bool | None:
    for name in names:  # use_activation, then vLLM's older spellings
        value = data.get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise BadRequest(f"'{name}' must be true or false")
            return value
    return None


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def classify_request(data: Any) -> ClassifyRequest:
    """``/classify``'s body: ``input`` (a text, texts, token ids, lists of token ids) or ``messages``."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be an object with 'input' (vLLM's /classify)")
    activation = _flag(data, "use_activation", "activation", "softmax")
    special = _flag(data, "add_special_tokens")
    if "messages" in data and "input" not in data:
        return ClassifyRequest([record_of({"messages": data["messages"]}, 0)], activation is not False)
    if "input" not in data:
        raise BadRequest("the body has no 'input' (a text, a list of texts, token ids or lists of token ids)")
    given = data["input"]
    items: list[Any]
    if isinstance(given, str) or (_is_ids(given) and given):
        items = [given]
    elif isinstance(given, list) and given:
        items = given
    else:
        raise BadRequest("'input' must be a text, a non-empty list of texts, token ids or lists of token ids")
    records = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            obj: dict[str, Any] = {"text": item}
            if special is not None:
                obj["add_special_tokens"] = special
            records.append(record_of(obj, index))
        elif _is_ids(item) and item:
            records.append(Record(line=index + 1, token_ids=list(item)))
        else:
            raise BadRequest(f"input[{index}]: must be a text or a non-empty list of token ids", index=index)
    return ClassifyRequest(records, activation is not False)


def _prob(value: Any, activation: bool) -> float | None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if not activation:
        return float(value)
    return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))


def classify_response(
    results: list[dict[str, Any]], request: ClassifyRequest, *, key: str, model: str, tokens: int
) -> dict[str, Any]:
    """vLLM's ``ClassificationResponse``: one ``data`` entry per input, ``probs`` of one class."""
    data = [
        {
            "index": i,
            "label": LABEL,
            "probs": [_prob(result.get(key), request.use_activation)],
            "num_classes": 1,
        }
        for i, result in enumerate(results)
    ]
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }


def models_response(model: str, max_length: int | None, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one model this server scores, as an OpenAI-style model list."""
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vhctl",
                "root": model,
                "parent": None,
                "max_model_len": max_length,
                "permission": [],
            }  # fmt: skip
        ],
    }
