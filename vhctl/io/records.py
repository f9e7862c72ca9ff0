"""Scoring input: text lines or JSON Lines, read lazily one line at a time.

Each input line becomes one :class:`Record`. The rules are the ones ``vhctl score`` documents:

- a line whose first non-blank character is ``{`` is a JSON object (JSON Lines), with one of the
  accepted forms ``{"text": ...}``, ``{"prompt": ..., "response": ...}`` (``prompt`` alone is read
  as a prompt with no response) or ``{"messages": [{"role": ..., "content": ...}, ...]}``, and an
  optional ``id`` of any JSON type that is echoed back; other fields are ignored; with
  ``pairs=True``, an object with ``chosen`` and ``rejected`` (strings or message lists, an optional
  ``prompt`` and ``subset``) is a preference pair (:mod:`vhctl.scoring.pairs` scores it);
- any other line is a plain text, taken as is (without its line ending);
- blank lines (only whitespace) are skipped, and the line numbers of the following lines still
  count them, so an error always names the line of the file;
- the bytes must be UTF-8 (a BOM at the start of the input is dropped).

A line that breaks these rules raises :class:`~vhctl.errors.InputError` with its line number, or,
with ``skip_bad=True``, becomes a Record whose ``error`` says what is wrong.
"""

from __future__ import annotations

import json
import os
import select
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from vhctl.errors import InputError

__all__ = ["ACCEPTED_FIELDS", "LineReader", "Record", "iter_records", "parse_line", "record_from_object"]

ACCEPTED_FIELDS = "'text', 'prompt' + 'response', or 'messages'"
_BOM = "\ufeff"


@dataclass
class Record:
    """One input line, ready for tokenization.

    Exactly one form is set on a good record: ``text``, ``prompt`` (and ``response``, which may be
    None), or ``messages``. ``error`` is set instead on a bad line read with ``skip_bad``.

    Attributes:
        line: 1-based line number in the input.
        id: The ``id`` field of a JSON line, any JSON value (see ``has_id``).
        has_id: Whether the line had an ``id`` field (``id`` may legitimately be ``null``).
        text: A plain text (a text line or the ``text`` field).
        prompt: The ``prompt`` field.
        response: The ``response`` field (None when the line has a prompt only).
        messages: The ``messages`` field, a list of ``{"role", "content"}`` dicts.
        error: Why the line could not be read (only with ``skip_bad``).
        chosen: A preference pair's preferred answer (a string or a message list); with
            ``rejected``, the record is a pair and ``prompt`` (a string or a message list) is optional.
        rejected: The pair's other answer.
        subset: The pair's ``subset`` field (RewardBench's), any JSON value; None when absent.
        add_special_tokens: False: a ``text`` (or ``prompt`` + ``response``) gets none of the
            tokenizer's special tokens: the string is scored exactly as it tokenizes (OpenRLHF's
            reward server does this); the ``add_special_tokens`` field of a JSON line.
        prompt_hint: The text's beginning that other records share (a prompt): its tokens are
            computed once for them; never changes a value. Set by the server, not read from input.
        token_ids: Token ids scored as they are (a client that tokenized itself, e.g. vLLM's
            ``/classify`` with ids); set by the server, not read from input.
    """

    line: int
    id: Any = None
    has_id: bool = False
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list[dict[str, Any]] | None = None
    error: str | None = None
    chosen: Any = None
    rejected: Any = None
    subset: Any = None
    add_special_tokens: bool = True
    prompt_hint: str | None = None
    token_ids: list[int] | None = None

    @property
    def kind(self) -> str:
        """``"error"``, ``"pair"``, ``"tokens"``, ``"messages"``, ``"prompt"`` or ``"text"``."""
        if self.error is not None:
            return "error"
        if self.chosen is not None:
            return "pair"
        if self.token_ids is not None:
            return "tokens"
        if self.messages is not None:
            return "messages"
        if self.prompt is not None:
            return "prompt"
        return "text"


def _bad(line: int, message: str, hint: str | None = None) -> InputError:
    return InputError(f"line {line}: {message}", line=line, hint=hint)


def _check_str(value: Any, field: str, line: int) -> str:
    """Return ``value`` if it is a string the tokenizer can take (no lone surrogates from \\uD800 escapes)."""
    if not isinstance(value, str):
        raise _bad(line, f"field '{field}' must be a string, not {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(
            line,
            f"field '{field}' holds an invalid unicode escape (a lone surrogate at character {exc.start})",
        ) from None
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number"


def _check_messages(value: Any, line: int) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad(
            line, 'field \'messages\' must be a non-empty array of {"role": ..., "content": ...} objects'
        )
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(
                line, f"{where} must be an object with 'role' and 'content', not {_json_type(message)}"
            )
        for key in ("role", "content"):
            if key not in message:
                raise _bad(line, f"{where} has no '{key}'")
        _check_str(message["role"], f"{where}.role", line)
        content = message["content"]
        if isinstance(content, str):
            _check_str(content, f"{where}.content", line)
        elif isinstance(content, list):
            # Multimodal-style content parts: only their text is validated here, the chat template renders them.
            for part_index, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    _check_str(part["text"], f"{where}.content[{part_index}].text", line)
        else:
            raise _bad(line, f"{where}.content must be a string or an array, not {_json_type(content)}")
    return value


def _answer(value: Any, field: str, line: int) -> str | list[dict[str, Any]]:
    """A pair's answer (or its prompt): a string or a message list."""
    if isinstance(value, list):
        try:
            return _check_messages(value, line)
        except InputError as exc:
            raise _bad(line, f"field '{field}': {str(exc).removeprefix(f'line {line}: ')}") from None
    if not isinstance(value, str):
        raise _bad(line, f"field '{field}' must be a string or an array of messages, not {_json_type(value)}")
    return _check_str(value, field, line)


def _pair(obj: dict[str, Any], record: Record) -> Record:
    line = record.line
    missing = [name for name in ("chosen", "rejected") if name not in obj]
    if missing:
        raise _bad(line, f"has {'rejected' if missing == ['chosen'] else 'chosen'} but no '{missing[0]}'",
                   hint="a preference pair needs both 'chosen' and 'rejected'")  # fmt: skip
    for name in ("text", "response", "messages"):
        if name in obj:
            raise _bad(line, f"has both a preference pair and '{name}'; give one")
    record.chosen = _answer(obj["chosen"], "chosen", line)
    record.rejected = _answer(obj["rejected"], "rejected", line)
    if obj.get("prompt") is not None:
        prompt = _answer(obj["prompt"], "prompt", line)
        record.prompt, record.messages = (prompt, None) if isinstance(prompt, str) else (None, prompt)
    record.subset = obj.get("subset")
    return record


def record_from_object(obj: dict[str, Any], line: int, *, pairs: bool = False) -> Record:
    """The record of a decoded JSON object (a JSON line, a server request's record, a table row).

    ``pairs``: read an object with ``chosen`` or ``rejected`` as a preference pair (its prompt,
    when a message list, goes to ``messages``); else such an object is read by its other fields.

    Raises:
        InputError: an object of no accepted form, or a field of the wrong type.
    """
    record = Record(line=line)
    if "id" in obj:
        record.id, record.has_id = obj["id"], True
    if pairs and ("chosen" in obj or "rejected" in obj):
        return _pair(obj, record)
    forms = [name for name in ("text", "prompt", "messages") if name in obj]
    if not forms:
        if "response" in obj:
            raise _bad(line, "has 'response' but no 'prompt'", hint=f"accepted fields: {ACCEPTED_FIELDS}")
        found = ", ".join(repr(key) for key in list(obj)[:8]) or "none"
        raise _bad(line, f"no known field (found: {found})", hint=f"accepted fields: {ACCEPTED_FIELDS}")
    if len(forms) > 1:
        raise _bad(
            line,
            f"has both {' and '.join(repr(f) for f in forms)}; give only one",
            hint=f"accepted fields: {ACCEPTED_FIELDS}",
        )
    form = forms[0]
    if "add_special_tokens" in obj:
        flag = obj["add_special_tokens"]
        if not isinstance(flag, bool):
            raise _bad(line, f"field 'add_special_tokens' must be true or false, not {_json_type(flag)}")
        if form == "messages":
            raise _bad(
                line, "'add_special_tokens' applies to 'text' and 'prompt'; a chat template writes its own"
            )
        record.add_special_tokens = flag
    if form == "text":
        if "response" in obj:
            raise _bad(line, "has both 'text' and 'response'; use 'prompt' + 'response'")
        record.text = _check_str(obj["text"], "text", line)
    elif form == "prompt":
        record.prompt = _check_str(obj["prompt"], "prompt", line)
        if "response" in obj:
            record.response = _check_str(obj["response"], "response", line)
    else:
        if "response" in obj:
            raise _bad(line, "has both 'messages' and 'response'; put the response in the messages")
        record.messages = _check_messages(obj["messages"], line)
    return record


def parse_line(raw: bytes | str, line: int, *, pairs: bool = False) -> Record | None:
    """Parse one input line (without or with its line ending); None for a blank line.

    ``pairs``: read preference pairs (see :func:`record_from_object`).

    Raises:
        InputError: the line is not UTF-8, not valid JSON, or a JSON object of no accepted form.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(
                line,
                f"not valid UTF-8 (byte {exc.start + 1} of the line)",
                hint="convert the input to UTF-8, e.g. with iconv",
            ) from None
    else:
        text = raw
    if line == 1 and text.startswith(_BOM):
        text = text[1:]
    text = text.removesuffix("\n").removesuffix("\r")
    stripped = text.strip()
    if not stripped:
        return None
    if not stripped.startswith("{"):
        return Record(line=line, text=_check_str(text, "text", line))
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise _bad(line, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers over Python's digit limit, deep nesting
        raise _bad(line, f"invalid JSON: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):  # unreachable for text starting with "{", kept as a guard
        raise _bad(line, "a line starting with '{' must be one JSON object")
    return record_from_object(obj, line, pairs=pairs)


def iter_records(
    stream: IO[bytes] | Iterable[bytes | str], *, skip_bad: bool = False, pairs: bool = False
) -> Iterator[Record]:
    """Yield one :class:`Record` per non-blank input line, lazily and in order.

    Args:
        stream: A binary file (``sys.stdin.buffer``, ``open(path, "rb")``) or any iterable of lines
            (bytes, or already decoded str).
        skip_bad: Yield a Record with ``error`` set for a bad line instead of raising.
        pairs: Read ``chosen`` / ``rejected`` objects as preference pairs (see :func:`parse_line`).

    Yields:
        Records, each holding its 1-based line number.

    Raises:
        InputError: a bad line (its ``line`` attribute is the line number), unless ``skip_bad``.

    Example:
        >>> [r.text for r in iter_records([b"hello\\n", b"\\n", b'{"text": "hi"}\\n'])]
        ['hello', 'hi']
    """
    for number, raw in enumerate(stream, start=1):
        try:
            record = parse_line(raw, number, pairs=pairs)
        except InputError as exc:
            if not skip_bad:
                raise
            record = Record(line=number, error=str(exc).removeprefix(f"line {number}: "))
            _recover_id(raw, record)
        if record is not None:
            yield record


def _recover_id(raw: bytes | str, record: Record) -> None:
    """Keep the ``id`` of a bad JSON line when it can be read, so error records can be matched."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError, TypeError):
        return
    if isinstance(obj, dict) and "id" in obj:
        record.id, record.has_id = obj["id"], True


class LineReader:
    """The lines of a file or pipe, which can tell whether the next one is already there.

    ``vhctl score --stream`` ends a window when :meth:`ready` says no more input is waiting, so a
    slow producer's lines (a generator writing samples as it makes them, a person typing) are
    scored as they come instead of once a full window has arrived. The lines are the ones a
    binary file yields (split after ``\\n``, the last one possibly without it).

    Args:
        stream: A binary file with a file descriptor (``sys.stdin.buffer``, ``open(path, "rb")``)
            that nothing has read from yet: reading goes around Python's buffer.
        chunk: Bytes asked for per read (a pipe returns what it holds, up to this).
    """

    def __init__(self, stream: IO[bytes], *, chunk: int = 1 << 16) -> None:
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
            self._fd = None  # an in-memory stream: read it as it is, always ready
        self._stream = stream
        self._chunk = chunk
        self._buffer = b""
        self._start = 0  # the unread part of the buffer begins here
        self._eof = False

    def __iter__(self) -> LineReader:
        return self

    def __next__(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", self._start)
            if end >= 0:
                line = self._buffer[self._start : end + 1]
                self._start = end + 1
                return line
            if self._eof:
                if self._start < len(self._buffer):
                    line, self._buffer, self._start = self._buffer[self._start :], b"", 0
                    return line
                raise StopIteration
            data = os.read(self._fd, self._chunk) if self._fd is not None else self._stream.read(self._chunk)
            self._buffer, self._start = self._buffer[self._start :] + data, 0
            self._eof = not data

    def ready(self) -> bool:
        """Whether the next line can be had without waiting for the producer (end of input counts).

        A partly written line counts as ready once any of it is there. Where the descriptor
        cannot be polled, always True: the caller then reads full windows, as without ``--stream``.
        """
        if self._eof or self._fd is None or self._buffer.find(b"\n", self._start) >= 0:
            return True
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)
