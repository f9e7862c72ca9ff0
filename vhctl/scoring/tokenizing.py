"""Records to token ids: what each kind of record scores, with truncation and the encode cache.

- ``text``: the text with the tokenizer's special tokens (as ``tokenizer(text)``);
- ``prompt`` + ``response``: both tokenized **without** special tokens and concatenated, then the
  tokenizer's special tokens are put around the whole, so every response to one prompt starts
  with the same token ids (what prefix sharing keys on);
- ``messages``: rendered with the tokenizer's chat template, then tokenized without extra special
  tokens (the template writes them);
- seq2seq: the text or prompt goes to the encoder; the decoder gets ``decoder_start_token_id``
  followed by the tokenized response (none for a text).

With ``max_length``, a longer sequence keeps its **end** (the value at the last token is the one
that matters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        if self.seq2seq:
            self._prepare_seq2seq(item, stats)
        else:
            if record.messages is not None:
                ids = self._encode(self._render_chat(record), special=False, line=line)
            elif record.prompt is not None and record.response is not None:
                prompt = self._encode(record.prompt, special=False, line=line)
                response = self._encode(record.response, special=False, line=line)
                ids = self.special_prefix + prompt + response + self.special_suffix
                item.prefix_len = len(self.special_prefix) + len(prompt)
            else:
                text = record.text if record.text is not None else record.prompt
                ids = self._encode(text or "", special=True, line=line)
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
        if record.messages is not None:
            enc = self._encode(self._render_chat(record), special=False, line=line)
        else:
            source = record.text if record.text is not None else record.prompt
            enc = self._encode(source or "", special=True, line=line)
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
                wanted[(record.text, True)] = None
            elif record.prompt is not None:
                pair = record.response is not None and not self.seq2seq
                wanted[(record.prompt, not pair)] = None
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
