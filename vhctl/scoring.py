"""Streaming value (and reward) scoring of text with a value-head model.

The plain way to score is TRL's: pad a batch, run the whole language model with
``output_hidden_states=True`` and apply the value head to ``hidden_states[-1]``. :class:`Scorer`
computes the same numbers with less work:

- it runs the **backbone only** (``model.base_model``: no LM head over the vocabulary, no stack of
  hidden states), under ``torch.inference_mode``;
- it reads the input in **windows** of ``window`` records, sorts each window by length, cuts it
  into batches within a token budget (``batch_size`` times the longest sequence of the window)
  where padding would cost more than another forward pass (:mod:`vhctl.batching`), and emits the
  results in input order (memory is bounded by the window, whatever the input length);
- records of a window that share an exact **prompt token prefix** (best-of-n: one prompt, n
  responses) compute the prompt once: the prompt runs with ``use_cache=True`` and the responses run
  on the cached keys/values, replicated along the batch, with the matching position ids and mask.

Values match the plain padded forward within float noise (about 1e-6 in float32; the first use
of prompt sharing is checked against the plain path, which takes over if they differ). Seq2seq
models (T5, BART) and models whose cache cannot be reused run the plain path (without the LM
head). GPT-2-style tanh GELUs written op by op run as PyTorch's fused kernel while scoring.

What is scored:

- ``text``: the text with the tokenizer's special tokens (as ``tokenizer(text)``);
- ``prompt`` + ``response``: both tokenized **without** special tokens and concatenated, then the
  tokenizer's special tokens are put around the whole (e.g. a BOS in front if it adds one), so
  every response to one prompt starts with the same token ids; ``values`` covers all the tokens
  (special ones, prompt and response);
- ``messages``: rendered with the tokenizer's chat template, then tokenized without extra special
  tokens (the template writes them);
- seq2seq: the text or prompt goes to the encoder; the decoder gets ``decoder_start_token_id``
  followed by the tokenized response (none for a text), and the value is the one at the last
  decoder token; ``values`` covers the decoder tokens.

With ``max_length``, a longer sequence keeps its **end** (the value at the last token is the one
that matters); ``stats.truncated`` counts them.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vhctl.batching import pass_overhead, plan_batches
from vhctl.dtypes import canonical_dtype
from vhctl.errors import InputError, UsageError, model_failures
from vhctl.io.records import Record
from vhctl.modeling.cache import cache_rows_selectable, prefix_sharing_supported

if TYPE_CHECKING:
    import torch

__all__ = ["ScoreStats", "Scorer", "resolve_device", "resolve_dtype"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
WINDOW_PER_BATCH = 32  # default window = batch_size * WINDOW_PER_BATCH records
# Activation modules that compute 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))) op by op.
_TANH_GELU = frozenset({"NewGELUActivation", "FastGELUActivation", "BloomGelu"})


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.gelu(x, approximate="tanh")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; ``auto`` is CUDA when there is one.

    Raises:
        UsageError: an unknown spec, or CUDA asked for where there is none (or not that index).
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise UsageError(f"invalid device {spec!r}", hint=f"use one of {', '.join(DEVICE_CHOICES)}")
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {spec!r} asked for, but CUDA is not available here", hint="use --device cpu"
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise UsageError(
                f"device {spec!r} asked for, but there {'is' if count == 1 else 'are'} only {count} CUDA device(s)",
                hint=f"use cuda:0..cuda:{count - 1}",
            )
        return torch.device("cuda", index)
    raise UsageError(f"invalid device {spec!r}", hint=f"use one of {', '.join(DEVICE_CHOICES)}")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Turn ``auto`` or a name of :mod:`vhctl.dtypes` (``bf16``, ``float16``...) into a ``torch.dtype``.

    ``auto`` is bfloat16 on a CUDA device that supports it and float32 everywhere else (CPU, older
    GPUs: float16 can overflow in some models, so it is only used when asked for).

    Raises:
        UsageError: an unknown dtype name.
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = canonical_dtype(value)
    return getattr(torch, name)


@dataclass
class ScoreStats:
    """Counts over everything scored so far (the CLI prints a summary from them).

    Attributes:
        records: Records scored.
        errors: Error records emitted (bad lines, with ``skip_bad``).
        truncated: Records cut to ``max_length`` (their start was dropped).
        tokens: Tokens scored, after truncation (encoder + decoder tokens for seq2seq).
        shared_prompts: Prompt forwards saved by prefix sharing (a group of n responses saves n - 1).
        shared_tokens: Prompt tokens not recomputed thanks to prefix sharing.
    """

    records: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    shared_prompts: int = 0
    shared_tokens: int = 0


@dataclass
class _Item:
    """A record of the current window, tokenized."""

    index: int
    record: Record
    ids: list[int] = field(default_factory=list)  # causal: the sequence; seq2seq: encoder ids
    dec: list[int] | None = None  # seq2seq decoder ids (start token first)
    prefix_len: int = 0  # causal prompt+response: tokens of the (special + prompt) prefix
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Padded:
    """A right-padded batch on the model's device, with its lengths also on the host."""

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    lengths_list: list[int]
    padded: bool


@dataclass
class _Shared:
    """The prompts of a pack, run once: their cache and padded batch."""

    cache: Any
    prompts: _Padded
    many: bool


@dataclass
class _Group:
    """Window records whose sequences start with the same prompt token ids."""

    prompt: list[int]
    items: list[_Item]


class Scorer:
    """Scores records with a value-head model, streaming, results in input order.

    Args:
        model: A value-head wrapper (``AutoModelForCausalLMWithValueHead`` or the seq2seq one, from
            vhctl or TRL): ``pretrained_model`` (a transformers model or a PeftModel), ``v_head``,
            and for rewards ``score``, ``rm_adapter_name``, ``supports_rm_adapter``. It is put in
            ``eval()`` mode; its device and dtype are used as they are.
        tokenizer: The checkpoint's tokenizer.
        batch_size: Sequences per forward pass for the longest sequences of a window; shorter
            ones are packed up to the same number of tokens (see ``max_batch_tokens``).
        max_length: Keep at most this many tokens of each sequence (its end). Default: the model's
            position limit when the config has one, else no limit.
        per_token: Also return ``values``, the value at every token.
        reward: Also return ``reward`` from the PEFT reward adapter of this name (``True``: the
            model's ``rm_adapter_name``).
        window: Records read ahead, sorted and batched together (memory is bounded by it).
            Default ``batch_size * 32``.
        prefix_sharing: Compute a prompt shared by several records of a window once.
        max_batch_tokens: Padded tokens per forward pass. Default: ``batch_size`` times the
            longest sequence of the window, so memory stays what ``batch_size`` of those need.
        skip_bad: Give a record that cannot be tokenized an error result instead of raising.
        shard: ``(rank, world)`` for data-parallel scoring: every rank is given the same records and
            makes the same windowing, sorting and batching decisions, but computes only the batches
            (or prompt packs) whose running index ``% world == rank``; ``gather`` then merges the
            ranks' results, so every rank yields every result, each computed in exactly the batch a
            single process would have put it in (the same floats, for the same thread count).
            None or a world of 1: everything is computed here.
        gather: With ``shard``: a collective that takes this rank's partial results of a window
            (any picklable object) and returns every rank's, in rank order (e.g.
            ``vhctl.distributed.Group.all_gather``). Called once per window, on every rank.
        fuse_activations: While scoring, run Python-written tanh-approximate GELUs (GPT-2's
            ``gelu_new``, ``gelu_fast``, Bloom's) as PyTorch's fused kernel: the same function
            (about 1e-7 apart in float32), a quarter less time for small GPT-2 models. The model
            is restored after each window.

    Attributes:
        stats: A :class:`ScoreStats`, updated as results are produced.

    Raises:
        UsageError: bad sizes, or a reward asked for from a model with no such adapter.

    Example:
        >>> scorer = Scorer(model, tokenizer, batch_size=16)
        >>> for result in scorer.score(iter_records(open("in.jsonl", "rb"))):
        ...     print(result["value"])
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        per_token: bool = False,
        reward: bool | str | None = None,
        window: int | None = None,
        prefix_sharing: bool = True,
        max_batch_tokens: int | None = None,
        skip_bad: bool = False,
        fuse_activations: bool = True,
        shard: tuple[int, int] | None = None,
        gather: Callable[[Any], list[Any]] | None = None,
    ) -> None:
        if tokenizer is None:
            raise UsageError(
                "scoring needs a tokenizer, and this model has none", hint="save one with the checkpoint"
            )
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise UsageError(f"max length must be at least 1, got {max_length}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise UsageError(f"max batch tokens must be at least 1, got {max_batch_tokens}")
        if shard is not None:
            rank, world = shard
            if world < 1 or not 0 <= rank < world:
                raise UsageError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
            if world > 1 and gather is None:
                raise UsageError("a shard of a multi-process run needs a gather function")
        self._shard = shard if shard is not None and shard[1] > 1 else None
        self._gather_parts = gather
        self._unit = 0  # running index of the batches and prompt packs planned so far (for the shard)
        self._parts: list[dict[int, dict[str, Any]]] = []  # sharded: this rank's results, per pass
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.window = max(window if window is not None else batch_size * WINDOW_PER_BATCH, 1)
        self.per_token = per_token
        self.max_batch_tokens = max_batch_tokens
        self.skip_bad = skip_bad
        self.stats = ScoreStats()
        self._encoded: dict[tuple[str, bool], list[int]] = {}
        self._budget = batch_size  # padded tokens per forward, set per window
        self._pending: list[tuple[list[_Item], torch.Tensor, list[torch.Tensor] | None]] = []

        model.eval()
        pm = model.pretrained_model
        self._pm = pm
        self._is_peft = hasattr(pm, "peft_config") and hasattr(pm, "get_base_model")
        self._hf = pm.get_base_model() if self._is_peft else pm
        config = self._hf.config
        self._seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self._prompt_learning = self._is_peft and any(
            getattr(cfg, "is_prompt_learning", False) for cfg in pm.peft_config.values()
        )
        self._device = self._hf.get_input_embeddings().weight.device
        self._overhead = pass_overhead(self._device.type)  # a forward pass's fixed cost, in tokens
        self._v_head = model.v_head
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        # Backbone: the model without its LM head. Without one we know, run the full model (the plain path).
        self._backbone = None
        self._encoder = self._decoder = None
        if not self._prompt_learning:
            if self._seq2seq:
                get_enc, get_dec = (
                    getattr(self._hf, "get_encoder", None),
                    getattr(self._hf, "get_decoder", None),
                )
                if callable(get_enc) and callable(get_dec):
                    self._encoder, self._decoder = get_enc(), get_dec()
            else:
                backbone = getattr(self._hf, "base_model", self._hf)
                if backbone is not self._hf:
                    self._backbone = backbone
        params = inspect.signature(self._backbone.forward).parameters if self._backbone is not None else {}
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._takes_positions = "position_ids" in params
        # Decided here, from the model's classes: a recurrent or convolution state cannot be shared.
        self._sharing = prefix_sharing and self._backbone is not None and prefix_sharing_supported(self._hf)[0]
        self._multi_prompt = True  # several prompts per cached forward (cleared if the first-use check fails)
        self._verified = False  # cache reuse checked against the plain path on first use
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        self._sliding_window = _sliding_window(text_config)

        limit = _position_limit(text_config)
        if max_length is not None and limit is not None and max_length > limit and not self._seq2seq:
            raise UsageError(
                f"max length {max_length} is over the model's limit of {limit} positions",
                hint=f"use --max-length {limit} or less",
            )
        self.max_length = max_length if max_length is not None else (None if self._seq2seq else limit)

        if self._seq2seq:
            start = getattr(config, "decoder_start_token_id", None)
            if start is None:
                start = getattr(getattr(self._hf, "generation_config", None), "decoder_start_token_id", None)
            if start is None:
                raise UsageError(
                    "the seq2seq model's config has no decoder_start_token_id; set it in config.json"
                )
            self._decoder_start = int(start)
        self._special_prefix, self._special_suffix = _special_tokens_around(tokenizer)

        self._reward_name: str | None = None
        if reward:
            self._reward_name = self._check_reward(reward)
        self._tanh_gelus = (
            [m for m in self._hf.modules() if type(m).__name__ in _TANH_GELU and "forward" not in vars(m)]
            if fuse_activations
            else []
        )

    # ------------------------------------------------------------------ set-up helpers

    def _check_reward(self, reward: bool | str) -> str:
        model = self.model
        if (
            not self._is_peft
            or not getattr(model, "supports_rm_adapter", False)
            or getattr(model, "score", None) is None
        ):
            raise UsageError(
                "a reward was asked for, but this checkpoint has no reward adapter",
                hint="add one with `vhctl attach-reward-adapter CKPT ADAPTER`",
            )
        name = model.rm_adapter_name if reward is True else str(reward)
        loaded = list(self._pm.peft_config)
        if name not in loaded or name != model.rm_adapter_name:
            raise UsageError(
                f"no reward adapter named {name!r} is loaded (reward adapter: {model.rm_adapter_name!r}, "
                f"adapters: {', '.join(loaded)})",
                hint=f"use --reward {model.rm_adapter_name}",
            )
        return name

    @contextlib.contextmanager
    def _fast_activations(self) -> Iterator[None]:
        for module in self._tanh_gelus:
            module.forward = _gelu_tanh  # an instance attribute shadows the class's forward
        try:
            yield
        finally:
            for module in self._tanh_gelus:
                vars(module).pop("forward", None)

    def _policy_adapter(self) -> contextlib.AbstractContextManager[Any]:
        """Values come from the policy: with no policy adapter loaded (only a reward one), the base model."""
        if (
            self._is_peft
            and getattr(self.model, "policy_adapter_name", "default") not in self._pm.peft_config
        ):
            return self._pm.disable_adapter()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ public API

    @property
    def input_device(self) -> torch.device:
        """Where token ids go: the input embeddings' device (the first GPU of a device map)."""
        return self._device

    def score(
        self, records: Iterable[Record], *, ready: Callable[[], bool] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Score records, yielding one result dict per record in input order.

        A result is ``{"id"?: ..., "value": float, "reward"?: float, "values"?: [float, ...]}``,
        or ``{"line": N, "id"?: ..., "error": "..."}`` for a bad record (``skip_bad``). Results come
        window by window, so the first ones appear long before a long input ends.

        ``ready`` says whether another record can be read without waiting (e.g.
        :meth:`vhctl.io.records.LineReader.ready`). With it, a window also ends at a pause in the
        input, so the records that have come are scored while the producer makes more; the batches
        (and so the last bits of the values) then depend on the timing. Without it, every window
        is full until the input ends, and the output is the same on every run.

        Raises:
            InputError: a bad line, when ``skip_bad`` is off. The results of all lines before it
                are yielded first.
        """
        iterator = iter(records)
        while True:
            window: list[Record] = []
            pending: InputError | None = None
            exhausted = False
            while len(window) < self.window:
                if window and ready is not None and not ready():
                    break  # a pause in the input: score what has come
                try:
                    window.append(next(iterator))
                except StopIteration:
                    exhausted = True
                    break
                except InputError as exc:  # a bad line from iter_records: score what came before it first
                    pending = exc
                    break
            items: list[_Item] = []
            self._pre_encode(window)
            try:
                for record in window:
                    try:
                        items.append(self._prepare(record, len(items)))
                    except InputError as exc:
                        if not self.skip_bad:
                            pending = exc
                            break
                        message = str(exc).removeprefix(f"line {record.line}: ")
                        items.append(_Item(len(items), record, error=message))
            finally:
                self._encoded.clear()
            if items:
                yield from self._process(items)
            if pending is not None:
                raise pending
            if exhausted:
                return

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Values of a few plain texts (a convenience for notebooks and tests)."""
        records = (Record(line=i + 1, text=text) for i, text in enumerate(texts))
        return [result["value"] for result in self.score(records)]

    # ------------------------------------------------------------------ tokenization

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
                pair = record.response is not None and not self._seq2seq
                wanted[(record.prompt, not pair)] = None
                if record.response is not None:
                    wanted[(record.response, self._seq2seq)] = None
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
            rendered = self.tokenizer.apply_chat_template(record.messages, tokenize=False)
        except Exception as exc:  # jinja errors, e.g. "roles must alternate"
            raise InputError(f"line {line}: the chat template failed: {exc}", line=line) from exc
        if not isinstance(rendered, str):
            raise InputError(f"line {line}: the chat template did not render a string", line=line)
        return rendered

    def _prepare(self, record: Record, index: int) -> _Item:
        """Tokenize one record (and truncate it); raise InputError naming its line if it cannot be scored."""
        item = _Item(index, record)
        if record.error is not None:
            item.error = record.error
            return item
        line = record.line
        if self._seq2seq:
            self._prepare_seq2seq(item)
        else:
            if record.messages is not None:
                ids = self._encode(self._render_chat(record), special=False, line=line)
            elif record.prompt is not None and record.response is not None:
                prompt = self._encode(record.prompt, special=False, line=line)
                response = self._encode(record.response, special=False, line=line)
                ids = self._special_prefix + prompt + response + self._special_suffix
                item.prefix_len = len(self._special_prefix) + len(prompt)
            else:
                text = record.text if record.text is not None else record.prompt
                ids = self._encode(text or "", special=True, line=line)
            if self.max_length is not None and len(ids) > self.max_length:
                cut = len(ids) - self.max_length
                ids = ids[cut:]
                item.prefix_len = max(item.prefix_len - cut, 0)
                self.stats.truncated += 1
            item.ids = ids
        if not item.ids:
            raise InputError(
                f"line {line}: nothing to score: the text is empty and the tokenizer adds no special tokens",
                line=line,
            )
        return item

    def _prepare_seq2seq(self, item: _Item) -> None:
        record, line = item.record, item.record.line
        if record.messages is not None:
            enc = self._encode(self._render_chat(record), special=False, line=line)
        else:
            source = record.text if record.text is not None else record.prompt
            enc = self._encode(source or "", special=True, line=line)
        response = (
            self._encode(record.response, special=True, line=line) if record.response is not None else []
        )
        dec = [self._decoder_start, *response]
        truncated = False
        if self.max_length is not None:
            if len(enc) > self.max_length:
                enc, truncated = enc[len(enc) - self.max_length :], True
            if len(dec) > self.max_length:
                dec, truncated = [self._decoder_start, *dec[len(dec) - self.max_length + 1 :]], True
        self.stats.truncated += truncated
        item.ids, item.dec = enc, dec

    # ------------------------------------------------------------------ planning

    def _process(self, items: list[_Item]) -> Iterator[dict[str, Any]]:
        import torch

        good = [item for item in items if item.error is None]
        for item in good:
            if item.record.has_id:
                item.result["id"] = item.record.id
        if good:
            groups, plain = self._plan(good)
            longest = max(len(i.ids) + (len(i.dec) if i.dec is not None else 0) for i in good)
            self._budget = self.max_batch_tokens or self.batch_size * longest
            with torch.inference_mode(), self._fast_activations():
                with self._policy_adapter():
                    self._run_pass(groups, plain, reward=False)
                if self._reward_name is not None:
                    previous = _active_adapter(self._pm, self.model)
                    self._pm.set_adapter(self._reward_name)
                    try:
                        self._run_pass(groups, plain, reward=True)
                    finally:
                        self._pm.set_adapter(previous)
            if self._shard is not None:
                self._merge_shards(items)
        for item in items:
            if item.error is not None:
                self.stats.errors += 1
                result = {"line": item.record.line}
                if item.record.has_id:
                    result["id"] = item.record.id
                result["error"] = item.error
                yield result
            else:
                self.stats.records += 1
                self.stats.tokens += len(item.ids) + (len(item.dec) if item.dec is not None else 0)
                result, item.result = item.result, {}
                yield result

    def _plan(self, items: list[_Item]) -> tuple[list[_Group], list[_Item]]:
        """Split a window into prompt groups (shared prefix, two or more records) and plain records."""
        if not self._sharing:
            return [], items
        by_prompt: dict[tuple[int, ...], list[_Item]] = {}
        plain: list[_Item] = []
        for item in items:
            if 0 < item.prefix_len < len(item.ids):
                by_prompt.setdefault(tuple(item.ids[: item.prefix_len]), []).append(item)
            else:
                plain.append(item)
        groups: list[_Group] = []
        for prompt, members in by_prompt.items():
            if len(members) > 1:
                groups.append(_Group(list(prompt), members))
                self.stats.shared_prompts += len(members) - 1
                self.stats.shared_tokens += (len(members) - 1) * len(prompt)
            else:
                plain.extend(members)
        return groups, plain

    def _batches(self, items: list[_Item], length: Any) -> Iterator[list[_Item]]:
        """Length-sorted batches within the token budget (padded tokens per forward).

        The budget is ``max_batch_tokens``, or ``batch_size`` times the longest sequence of the
        window: the longest sequences go ``batch_size`` at a time and shorter ones are packed up to
        the same number of tokens, so memory never exceeds what ``batch_size`` of the longest need,
        and there are fewer, fuller forward passes (what both a loaded CPU and a GPU want).
        """
        ordered = sorted(items, key=length)
        if ordered and not isinstance(length(ordered[0]), tuple):
            # One width per sequence: cut where padding costs more than another pass.
            sizes = plan_batches(
                [length(item) for item in ordered],
                max_rows=lambda width: self._budget // width,
                overhead=self._overhead,
            )
            yield from _split(ordered, sizes)
            return
        batch: list[_Item] = []  # seq2seq (encoder, decoder) lengths: fill the budget in order
        for item in ordered:
            if batch and (len(batch) + 1) * _total(length(item)) > self._budget:
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def _prompt_batches(self, groups: list[_Group]) -> Iterator[list[_Group]]:
        """Pack groups (by prompt length) so one forward computes several prompts.

        Several prompts of different lengths in one batch need per-row position ids, and a sliding
        window that all the tokens fit in; otherwise each prompt runs alone.
        """
        ordered = sorted(groups, key=lambda g: len(g.prompt))
        if not (self._takes_positions and self._multi_prompt):
            yield from ([group] for group in ordered)
            return
        pack: list[_Group] = []
        rows = 0
        for group in ordered:
            longest = len(group.prompt) + max(len(i.ids) - i.prefix_len for i in group.items)
            fits_window = self._sliding_window is None or longest < self._sliding_window
            prompt_tokens = (len(pack) + 1) * len(group.prompt)  # sorted: this prompt is the longest
            cache_tokens = (rows + len(group.items)) * longest
            if pack and (prompt_tokens > self._budget or cache_tokens > 4 * self._budget or not fits_window):
                yield pack
                pack, rows = [], 0
            if not fits_window:
                yield [group]
                continue
            pack.append(group)
            rows += len(group.items)
        if pack:
            yield pack

    # ------------------------------------------------------------------ running

    def _run_pass(self, groups: list[_Group], plain: list[_Item], *, reward: bool) -> None:
        """One pass over the window (values, or rewards); results are read back once, at the end.

        Reading each batch back as it finishes would make the host wait for the device every batch;
        queueing them all and reading at the end lets a GPU run while the next batch is prepared.
        """
        per_token = self.per_token and not reward
        self._pending = []
        if self._shard is not None:
            self._parts.append({})
        if self._seq2seq:
            for batch in self._batches(plain, lambda i: (len(i.ids), len(i.dec or ()))):
                if self._owns_next():
                    self._queue(batch, *self._forward_seq2seq(batch, per_token), reward=reward)
        else:
            for batch in self._batches(plain, lambda i: len(i.ids)):
                if self._owns_next():
                    self._queue(batch, *self._forward_plain(batch, per_token), reward=reward)
            for pack in self._prompt_batches(groups):
                # Another rank scores a pack it does not own, but the first-use check of prompt
                # sharing still runs here: what it decides changes the plan of later windows.
                self._run_shared(pack, per_token, reward=reward, compute=self._owns_next())
        self._read_back(reward=reward)

    def _owns_next(self) -> bool:
        """Whether this rank computes the next batch or prompt pack of the plan (always, unsharded)."""
        unit, self._unit = self._unit, self._unit + 1
        return self._shard is None or unit % self._shard[1] == self._shard[0]

    def _merge_shards(self, items: list[_Item]) -> None:
        """Put every rank's results of this window into ``items``, pass by pass, as one process would.

        Keys are added in the order a single process adds them (value, values, then reward), so
        the output is byte for byte the single-process one.
        """
        mine, self._parts = self._parts, []
        assert self._gather_parts is not None
        everyone: list[list[dict[int, dict[str, Any]]]] = self._gather_parts(mine)
        for step in range(len(mine)):
            for parts in everyone:
                for index, values in parts[step].items():
                    items[index].result.update(values)

    def _queue(
        self, batch: list[_Item], last: torch.Tensor, seq: list[torch.Tensor] | None, *, reward: bool
    ) -> None:
        """Apply the head (value or reward) on the device and keep the results for :meth:`_read_back`."""
        if reward:
            score = self.model.score
            out = score(last.to(device=score.weight.device, dtype=score.weight.dtype)).float()
            self._pending.append((batch, out, None))
        elif seq is not None:
            self._pending.append((batch, torch_stack_last(seq), seq))
        else:
            self._pending.append((batch, self._values(last), None))

    def _read_back(self, *, reward: bool) -> None:
        import torch

        if not self._pending:
            return
        flat = torch.cat([out.reshape(len(batch), -1).cpu() for batch, out, _ in self._pending]).tolist()
        row = 0
        for batch, _, seq in self._pending:
            rows = torch.cat(seq).cpu().tolist() if seq is not None else None
            start = 0
            for b, item in enumerate(batch):
                values = flat[row]
                row += 1
                new: dict[str, Any] = {}
                if reward:
                    new["reward"] = values[0] if len(values) == 1 else values
                else:
                    new["value"] = values[0]
                    if seq is not None and rows is not None:
                        new["values"] = rows[start : start + len(seq[b])]
                        start += len(seq[b])
                if self._shard is None:
                    item.result.update(new)
                else:  # merged with the other ranks' in _merge_shards
                    self._parts[-1][item.index] = new
        self._pending = []

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Value head over hidden states (..., H) -> (...) in float32, as the wrapper computes it."""
        weight = self._v_head.summary.weight
        return self._v_head(hidden.to(weight.device)).squeeze(-1).float()

    def _pad(self, rows: list[list[int]]) -> _Padded:
        """Right-pad token rows and send them to the model's device without waiting for it."""
        import torch

        lengths = [len(r) for r in rows]
        width = max(lengths)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        mask = (torch.arange(width)[None, :] < lengths_t[:, None]).long()
        return _Padded(
            ids=self._upload(ids),
            mask=self._upload(mask),
            lengths=self._upload(lengths_t),
            lengths_list=lengths,
            padded=min(lengths) != width,
        )

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._device.type == "cuda":  # pinned + non_blocking: the copy does not wait for queued kernels
            return tensor.pin_memory().to(self._device, non_blocking=True)
        return tensor.to(self._device)

    def _gather(
        self, hidden: torch.Tensor, padded: _Padded, per_token: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        import torch

        lengths = padded.lengths.to(hidden.device)  # a no-op, except under a device map (last GPU)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        if not per_token:
            return last, None
        values = self._values(hidden)
        return last, [values[b, :n] for b, n in enumerate(padded.lengths_list)]

    @model_failures("scoring")  # an exception in the model's code: one line, not a traceback
    def _causal(self, ids: torch.Tensor, mask: torch.Tensor | None, **extra: Any) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, T, H) of the causal model and its cache (with ``use_cache=True``).

        Through the backbone when there is one (no LM head); else the full model's
        ``hidden_states[-1]``, as the wrapper's forward takes it.
        """
        if self._backbone is not None:
            out = self._backbone(input_ids=ids, attention_mask=mask, **extra)
            cache = getattr(out, "cache", None)
            if cache is None and extra.get("use_cache"):
                cache = getattr(out, "past_key_values", None)
            return out.last_hidden_state, cache
        out = self._pm(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True, use_cache=False
        )
        return out.hidden_states[-1][:, -ids.shape[1] :], None  # prompt tuning prepends virtual tokens

    def _forward_plain(
        self, batch: list[_Item], per_token: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        padded = self._pad([item.ids for item in batch])
        hidden, _ = self._causal(padded.ids, padded.mask if padded.padded else None, use_cache=False)
        return self._gather(hidden, padded, per_token)

    @model_failures("scoring")
    def _forward_seq2seq(
        self, batch: list[_Item], per_token: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        enc = self._pad([item.ids for item in batch])
        dec = self._pad([item.dec or [] for item in batch])
        if self._encoder is not None and self._decoder is not None:
            encoded = self._encoder(input_ids=enc.ids, attention_mask=enc.mask).last_hidden_state
            hidden = self._decoder(
                input_ids=dec.ids,
                attention_mask=dec.mask,
                encoder_hidden_states=encoded,
                encoder_attention_mask=enc.mask,
                use_cache=False,
            ).last_hidden_state
        else:
            out = self._pm(
                input_ids=enc.ids,
                attention_mask=enc.mask,
                decoder_input_ids=dec.ids,
                decoder_attention_mask=dec.mask,
                output_hidden_states=True,
                return_dict=True,
                use_cache=False,
            )
            hidden = out.decoder_hidden_states[-1]
        return self._gather(hidden, dec, per_token)

    def _run_shared(self, pack: list[_Group], per_token: bool, *, reward: bool, compute: bool = True) -> None:
        """Run the prompts of a pack once with a cache, then every response on that cache.

        With ``compute=False`` (a pack another rank scores) only the first-use checks run, so that
        every rank takes the same decisions a single process takes; nothing is queued.
        """
        import torch

        if not compute and self._verified:
            return
        prompts = self._pad([group.prompt for group in pack])
        many = len(pack) > 1
        prompt_hidden, cache = self._causal(prompts.ids, prompts.mask if many else None, use_cache=True)
        if not cache_rows_selectable(cache):
            # This model's cache cannot be replicated along the batch: score these records the plain way.
            self._sharing = False
            if compute:
                self._run_plain_items(
                    [item for group in pack for item in group.items], per_token, reward=reward
                )
            return
        shared = _Shared(cache, prompts, many)
        if not self._verified and not self._verify(pack, shared):
            if many:  # several prompts in one batch is what failed: try them one by one
                self._multi_prompt = False
                for group in pack:
                    self._run_shared([group], per_token, reward=reward, compute=compute)
            else:
                self._sharing = False
                if compute:
                    self._run_plain_items(pack[0].items, per_token, reward=reward)
            return
        if not compute:
            return
        prompt_values = self._values(prompt_hidden) if per_token else None
        rows = sorted(
            ((g, item) for g, group in enumerate(pack) for item in group.items),
            key=lambda row: len(row[1].ids) - row[1].prefix_len,
        )
        longest_prompt = max(prompts.lengths_list)
        sizes = plan_batches(
            [len(item.ids) - item.prefix_len for _, item in rows],
            # the responses' tokens within the budget, and their cached context within 4 budgets
            max_rows=lambda width: min(self._budget // width, 4 * self._budget // (width + longest_prompt)),
            overhead=self._overhead,
        )
        for chunk in _split(rows, sizes):
            hidden, cont = self._shared_chunk(shared, chunk)
            last, cont_values = self._gather(hidden, cont, per_token)
            seq = None
            if cont_values is not None and prompt_values is not None:
                seq = [
                    torch.cat([prompt_values[g, : prompts.lengths_list[g]], values])
                    for (g, _), values in zip(chunk, cont_values, strict=True)
                ]
            self._queue([item for _, item in chunk], last, seq, reward=reward)

    def _shared_chunk(self, shared: _Shared, chunk: list[tuple[int, _Item]]) -> tuple[torch.Tensor, _Padded]:
        """Hidden states of the responses in ``chunk`` ((prompt index, item) rows) on the prompt cache."""
        import torch

        index = self._upload(torch.tensor([g for g, _ in chunk], dtype=torch.long))
        cont = self._pad([item.ids[item.prefix_len :] for _, item in chunk])
        extra: dict[str, Any] = {self._cache_kw: _select_cache(shared.cache, index), "use_cache": True}
        if shared.many:
            offsets = shared.prompts.lengths.index_select(0, index)
            positions = torch.arange(cont.ids.shape[1], device=self._device)[None, :] + offsets[:, None]
            extra["position_ids"] = positions * cont.mask  # padding gets position 0 (a valid index)
        attention = torch.cat([shared.prompts.mask.index_select(0, index), cont.mask], dim=1)
        hidden, _ = self._causal(cont.ids, attention, **extra)
        return hidden, cont

    def _verify(self, pack: list[_Group], shared: _Shared) -> bool:
        """Check once that the cached path gives the plain path's value, on the most sensitive row.

        Cache reuse depends on how a model builds positions and masks; an architecture that does it
        some other way (e.g. a local attention window that counts padding) is caught here and scored
        the plain way instead of wrongly.
        """
        import torch

        # The most sensitive row: most padding after its prompt, then the shortest response.
        g = min(range(len(pack)), key=lambda i: len(pack[i].prompt))
        item = min(pack[g].items, key=lambda i: len(i.ids) - i.prefix_len)
        hidden, cont = self._shared_chunk(shared, [(g, item)])
        cached = float(self._values(hidden[0, cont.lengths_list[0] - 1]))
        plain_last, _ = self._forward_plain([item], False)
        plain = float(self._values(plain_last[0]))
        tolerance = 1e-4 if hidden.dtype == torch.float32 else 5e-2  # float noise is ~1e-6 in float32
        ok = abs(cached - plain) <= tolerance * (1.0 + abs(plain))
        if ok and (len(pack) == 1 or self._multi_prompt):
            self._verified = True
        return ok

    def _run_plain_items(self, items: list[_Item], per_token: bool, *, reward: bool) -> None:
        for batch in self._batches(items, lambda i: len(i.ids)):
            self._queue(batch, *self._forward_plain(batch, per_token), reward=reward)


# ---------------------------------------------------------------------- helpers


def torch_stack_last(seq: list[torch.Tensor]) -> torch.Tensor:
    """The last value of each per-token row, as one tensor (read back with the others)."""
    import torch

    return torch.stack([values[-1] for values in seq])


def _split(ordered: list[Any], sizes: list[int]) -> Iterator[list[Any]]:
    start = 0
    for size in sizes:
        yield ordered[start : start + size]
        start += size


def _total(length: Any) -> int:
    return sum(length) if isinstance(length, tuple) else int(length)


def _active_adapter(pm: Any, model: Any) -> str:
    active = getattr(pm, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    return active or getattr(model, "policy_adapter_name", "default")


def _select_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new cache holding rows ``index`` of ``cache`` (rows may repeat); ``cache`` itself is untouched.

    The layers are copied shallowly, then ``batch_select_indices`` replaces their tensors (it does
    not write into them), so the prompt cache serves every chunk of responses. Under a device map
    the layers sit on several GPUs: each gets the index on its own device.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    on_device = {index.device: index}
    for layer in selected.layers:
        keys = getattr(layer, "keys", None)
        device = getattr(keys, "device", index.device)
        if device not in on_device:
            on_device[device] = index.to(device)
        layer.batch_select_indices(on_device[device])
    return selected


def _sliding_window(config: Any) -> int | None:
    """The local attention window of the model, if any layer has one (sliding_window, GPT-Neo's window_size)."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int):
        window = getattr(config, "window_size", None)
    layer_types = getattr(config, "layer_types", None) or getattr(config, "attention_layers", None) or ()
    uses_sliding = (
        any("sliding" in str(kind) or "local" in str(kind) for kind in layer_types) or not layer_types
    )
    if (
        isinstance(window, int)
        and window > 0
        and uses_sliding
        and getattr(config, "use_sliding_window", True)
    ):
        return window
    return None


def _position_limit(config: Any) -> int | None:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
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
