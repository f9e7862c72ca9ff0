"""Request bodies into scoring records: ``/v1/score``'s records and OpenRLHF's ``/get_reward`` queries.

Every record goes through :func:`vhctl.io.records.record_from_object`, so the server accepts exactly the
records ``vhctl score`` reads and reports a bad one with the same words, naming the record's index
in the request instead of a line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record, record_from_object

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "APART",
    "TOKENIZE_CHOICES",
    "WHOLE",
    "BadRequest",
    "ScoreRequest",
    "check_tokenize",
    "parse_json",
    "record_of",
    "reward_request",
    "score_request",
    "special_texts",
]


class BadRequest(Exception):
    """A request the server refuses: the HTTP status and one line saying why.

    Attributes:
        status: 400 (bad JSON or record), 413 (too large) or 503 (busy, loading).
        index: The index of the bad record in the request, when one record is at fault.
    """

    def __init__(self, message: str, *, status: int = 400, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.index = index

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.index is not None:
            body["index"] = self.index
        return body


@dataclass
class ScoreRequest:
    """The records of one request, in order, and whether it asks for per-token values."""

    records: list[Record]
    per_token: bool = False


def parse_json(body: bytes) -> Any:
    """The request's JSON document, or a 400 saying why it is not one."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"invalid JSON: {type(exc).__name__}") from None


def score_request(data: Any) -> ScoreRequest:
    """``/v1/score``: a JSON array of records, or ``{"records": [...], "per_token": bool}``.

    A record is an object as ``vhctl score`` reads a JSON line (``text``, ``prompt`` +
    ``response``, or ``messages``, and an optional ``id``), or a string, read as ``{"text": ...}``.
    """
    per_token = False
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"records", "per_token"})
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(map(repr, unknown))}; give 'records' and 'per_token'"
            )
        per_token = data.get("per_token", False)
        if not isinstance(per_token, bool):
            raise BadRequest("'per_token' must be true or false")
        data = data.get("records")
    if not isinstance(data, list):
        raise BadRequest("the body must be a JSON array of records, or an object with a 'records' array")
    records = []
    for index, item in enumerate(data):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise BadRequest(f"record {index}: must be an object or a string", index=index)
        records.append(record_of(item, index))
    return ScoreRequest(records, per_token)


WHOLE, APART = "whole", "apart"
TOKENIZE_CHOICES = (WHOLE, APART)


def check_tokenize(value: str) -> str:
    """``--get-reward-tokenize``: ``whole`` or ``apart``.

    Raises:
        UsageError: another value.
    """
    if value not in TOKENIZE_CHOICES:
        raise UsageError(
            f"invalid --get-reward-tokenize {value!r}", hint=f"use {' or '.join(TOKENIZE_CHOICES)}"
        )
    return value


def reward_request(data: Any, specials: tuple[str, str] = ("", ""), *, default: str = WHOLE) -> list[Record]:
    """``/get_reward`` (OpenRLHF's remote reward model): ``{"query": [...], "prompts": [...], "labels": [...]}``.

    Each query is a full text (prompt and response) as the trainer decoded it, special tokens
    written out. By default (``"tokenize": "whole"``) it is scored as OpenRLHF's own server
    (``openrlhf/cli/serve_rm.py``) scores it: the whole string tokenized with
    ``add_special_tokens=False``, the reward at its last token; a prompt that begins its query only
    lets the queries of one prompt share its tokens (values unchanged).

    ``"tokenize": "apart"`` (or ``default="apart"``, the server's ``--get-reward-tokenize``) scores a query that begins with its prompt as that prompt and the rest
    as the response, each tokenized alone, with the tokenizer's special tokens (``specials``, their
    texts, e.g. ``("<s>", "")``) around the whole but never twice: as the policy produced the
    tokens. The two differ where a BPE merge crosses the prompt's end, and by the special tokens a
    query does not carry. ``labels`` are accepted and not used.
    """
    if not isinstance(data, dict) or "query" not in data:
        raise BadRequest("the body must be an object with a 'query' array (OpenRLHF's remote reward model)")
    queries, prompts = data["query"], data.get("prompts")
    tokenize = data.get("tokenize", default)
    if tokenize not in TOKENIZE_CHOICES:
        raise BadRequest(f"'tokenize' must be {' or '.join(map(repr, TOKENIZE_CHOICES))}, not {tokenize!r}")
    if not isinstance(queries, list):
        raise BadRequest("'query' must be an array of strings")
    if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(queries)):
        raise BadRequest("'prompts' must be an array as long as 'query'")
    records = []
    for index, query in enumerate(queries):
        if not isinstance(query, str):
            raise BadRequest(f"query[{index}]: must be a string", index=index)
        prompt = prompts[index] if prompts is not None else None
        begins = isinstance(prompt, str) and prompt and query.startswith(prompt) and len(prompt) < len(query)
        if tokenize == WHOLE:
            record = record_of({"text": query, "add_special_tokens": False}, index)
            record.prompt_hint = prompt if begins else None
            records.append(record)
            continue
        text = _strip_specials(query, specials)
        if begins:
            assert isinstance(prompt, str)
            head = _strip_specials(prompt, (specials[0], ""))
            records.append(record_of({"prompt": head, "response": text[len(head) :]}, index))
        else:
            records.append(record_of({"text": text}, index))
    return records


def _strip_specials(text: str, specials: tuple[str, str]) -> str:
    prefix, suffix = specials
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text


def record_of(obj: dict[str, Any], index: int) -> Record:
    """The record of a request's object, checked as ``vhctl score`` checks a JSON line."""
    line = index + 1
    try:
        return record_from_object(obj, line)
    except InputError as exc:
        raise BadRequest(f"record {index}: {str(exc).removeprefix(f'line {line}: ')}", index=index) from None


def special_texts(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The texts of the special tokens ``tokenizer`` puts before and after a text (``("", "")`` for GPT-2)."""
    bare = list(tokenizer("hello world", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("hello world", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start : start + len(bare)] == bare:
            return str(tokenizer.decode(full[:start])), str(tokenizer.decode(full[start + len(bare) :]))
    return "", ""
