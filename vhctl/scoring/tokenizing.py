"""Records to token ids: what each kind of record scores, with truncation and the encode cache.

- ``text``: the text with the tokenizer's special tokens (as ``tokenizer(text)``), or without them
  when the record says ``add_special_tokens=False``; a ``prompt_hint`` it starts with is its prompt
  for prefix sharing (the tokens the two share);
- ``prompt`` + ``response``: both tokenized **without** special tokens and concatenated, then the
  tokenizer's special tokens are put around the whole (unless ``add_special_tokens=False``), so
  every response to one prompt starts with the same token ids (what prefix sharing keys on);
- ``messages``: rendered with the tokenizer's chat template, then tokenized without extra special
  tokens (the template writes them); when the last message is the assistant's, the tokens it shares
  with the earlier messages rendered with the generation prompt are its prompt, so the answers to
  one conversation share its forward pass as prompt + response records do;
- token ids (``token_ids``): scored as they are (each must be an id of the tokenizer);
- seq2seq: the text or prompt (or the token ids) goes to the encoder; the decoder gets ``decoder_start_token_id``
  followed by the tokenized response (none for a text).

With ``max_length``, a longer sequence keeps its **end** (the value at the last token is the one
that matters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vhctl.errors import InputError
from vhctl.io.records import Record
from vhctl.scoring.items import Item, ScoreStats

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["RecordEncoder", "special_tokens_around"]


class RecordEncoder:
    """Tokenizes a window of records into :class:`~vhctl.scoring.items.Item` s.

    Args:
        tokenizer: The checkpoint's tokenizer.
        seq2seq: Records go to an encoder-decoder model (see the module docstring).
        max_length: Keep at most this many tokens of each sequence (its end); None: no limit.
        decoder_start: The seq2seq decoder's start token (unused for a causal model).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        seq2seq: bool,
        max_length: int | None,
        decoder_start: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.seq2seq = seq2seq
        self.max_length = max_length
        self.decoder_start = decoder_start
        self.special_prefix, self.special_suffix = special_tokens_around(tokenizer)
        self._encoded: dict[tuple[str, bool], list[int]] = {}

    def window(
        self, records: list[Record], *, skip_bad: bool, stats: ScoreStats
    ) -> tuple[list[Item], InputError | None]:
        """The items of a window, and the error that cut it short (a bad record, without ``skip_bad``).

        With ``skip_bad``, a record that cannot be tokenized becomes an error item in its place.
        Truncated records are counted in ``stats``.
        """
        items: list[Item] = []
        pending: InputError | None = None
        self._pre_encode(records)
        try:
            for record in records:
                try:
                    items.append(self.prepare(record, len(items), stats))
                except InputError as exc:
                    if not skip_bad:
                        pending = exc
                        break
                    message = str(exc).removeprefix(f"line {record.line}: ")
                    items.append(Item(len(items), record, error=message))
        finally:
            self._encoded.clear()
        return items, pending

    def prepare(self, record: Record, index: int, stats: ScoreStats) -> Item:
        """Tokenize one record (and truncate it); raise InputError naming its line if it cannot be scored."""
        item = Item(index, record)
        if record.error is not None:
            item.error = record.error
            return item
        line = record.line
        if record.chosen is not None:
            raise InputError(
                f"line {line}: a preference pair is two sequences; score it through vhctl.scoring.pairs",
                line=line,
            )
        if self.seq2seq:
            self._prepare_seq2seq(item, stats)
        else:
            if record.token_ids is not None:
                ids = self._check_ids(record.token_ids, line)
            elif record.messages is not None:
                ids = self._encode(self._render_chat(record), special=False, line=line)
                item.prefix_len = self._chat_prompt_len(record.messages, ids)
            elif record.prompt is not None and record.response is not None:
                prompt = self._encode(record.prompt, special=False, line=line)
                response = self._encode(record.response, special=False, line=line)
                before, after = (
                    (self.special_prefix, self.special_suffix) if record.add_special_tokens else ([], [])
                )
                ids = before + prompt + response + after
                item.prefix_len = len(before) + len(prompt)
            else:
                text = record.text if record.text is not None else record.prompt
                ids = self._encode(text or "", special=record.add_special_tokens, line=line)
                if record.prompt_hint:
                    hint = self._cached(record.prompt_hint, special=record.add_special_tokens)
                    item.prefix_len = _shared_len(hint, ids)
            if self.max_length is not None and len(ids) > self.max_length:
                cut = len(ids) - self.max_length
                ids = ids[cut:]
                item.prefix_len = max(item.prefix_len - cut, 0)
                item.truncated = True
                stats.truncated += 1
            item.ids = ids
        if not item.ids:
            raise InputError(
                f"line {line}: nothing to score: the text is empty and the tokenizer adds no special tokens",
                line=line,
            )
        return item

    def _prepare_seq2seq(self, item: Item, stats: ScoreStats) -> None:
        record, line = item.record, item.record.line
        if record.token_ids is not None:
            enc = self._check_ids(record.token_ids, line)
        elif record.messages is not None:
            enc = self._encode(self._render_chat(record), special=False, line=line)
        else:
            source = record.text if record.text is not None else record.prompt
            enc = self._encode(source or "", special=record.add_special_tokens, line=line)
        response = (
            self._encode(record.response, special=True, line=line) if record.response is not None else []
        )
        dec = [self.decoder_start, *response]
        truncated = False
        if self.max_length is not None:
            if len(enc) > self.max_length:
                enc, truncated = enc[len(enc) - self.max_length :], True
            if len(dec) > self.max_length:
                dec, truncated = [self.decoder_start, *dec[len(dec) - self.max_length + 1 :]], True
        stats.truncated += truncated
        item.ids, item.dec, item.truncated = enc, dec, truncated

    def _pre_encode(self, window: list[Record]) -> None:
        """Tokenize the window's strings in one call per kind (the fast tokenizers batch in Rust).

        Repeated strings (the prompt of a best-of-n group) are encoded once. If the batch call
        fails, nothing is cached and each record is encoded alone, so the error names its line.
        """
        wanted: dict[tuple[str, bool], None] = {}
        for record in window:
            if record.error is not None or record.messages is not None:
                continue
            if record.text is not None:
                wanted[(record.text, record.add_special_tokens)] = None
            elif record.prompt is not None:
                pair = record.response is not None and not self.seq2seq
                wanted[(record.prompt, not pair and record.add_special_tokens)] = None
                if record.response is not None:
                    wanted[(record.response, self.seq2seq)] = None
        for special in (True, False):
            texts = [text for (text, flag) in wanted if flag is special]
            if not texts:
                continue
            try:
                encoded = self.tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]
            except Exception:  # the per-record path below reports the failing line
                continue
            for text, ids in zip(texts, encoded, strict=True):
                self._encoded[(text, special)] = list(ids)

    def _encode(self, text: str, *, special: bool, line: int) -> list[int]:
        cached = self._encoded.get((text, special))
        if cached is not None:
            return list(cached)
        try:
            return list(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])
        except Exception as exc:  # a tokenizer can reject odd input; name the line instead of crashing
            raise InputError(f"line {line}: the tokenizer failed: {exc}", line=line) from exc

    def _chat_prompt_len(self, messages: list[dict[str, Any]], ids: list[int]) -> int:
        """How many of ``ids`` (a rendered conversation) are its prompt: the tokens it shares with the
        messages before the last one rendered with the generation prompt (0: not an answer)."""
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            return 0
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that needs the whole conversation: no sharing, same values
            return 0
        if not isinstance(rendered, str):
            return 0
        return _shared_len(self._cached(rendered, special=False), ids)

    def _check_ids(self, ids: list[int], line: int) -> list[int]:
        """Token ids given as they are: each must be one the tokenizer knows."""
        size = len(self.tokenizer)
        for index, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < size:
                raise InputError(
                    f"line {line}: token {index} is {token!r}, not a token id of this tokenizer (0 to {size - 1})",
                    line=line,
                )
        return list(ids)

    def _cached(self, text: str, *, special: bool) -> list[int]:
        """A prompt's ids, tokenized once per window (the answers to one prompt come together)."""
        ids = self._encoded.get((text, special))
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])
            self._encoded[(text, special)] = ids
        return ids

    def _render_chat(self, record: Record) -> str:
        line = record.line
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"line {line}: 'messages' needs a tokenizer with a chat template, and this one has none",
                line=line,
                hint="give 'text' or 'prompt' + 'response' instead",
            )
        try:
            rendered = self.tokenizer.apply_chat_template(record.messages or [], tokenize=False)
        except Exception as exc:  # jinja errors, e.g. "roles must alternate"
            raise InputError(f"line {line}: the chat template failed: {exc}", line=line) from exc
        if not isinstance(rendered, str):
            raise InputError(f"line {line}: the chat template did not render a string", line=line)
        return rendered


def _shared_len(prompt: list[int], ids: list[int]) -> int:
    """How many first tokens ``ids`` shares with ``prompt``, if that leaves it at least one of its own."""
    shared = 0
    for a, b in zip(prompt, ids, strict=False):
        if a != b:
            break
        shared += 1
    return shared if shared < len(ids) else 0


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (e.g. ([bos], []) for Llama, ([], []) for GPT-2).

    Found by encoding a probe with and without special tokens, so it works for any tokenizer.
    """
    for probe in ("hello world", "a", "0"):
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        if not plain:
            continue
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
    return [], []
