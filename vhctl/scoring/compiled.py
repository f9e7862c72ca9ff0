"""A compiled backbone (``torch.compile``), where a measurement says it pays.

Why it can pay: transformers' eager forward runs each norm, activation, softmax and mask as a
kernel of its own; inductor fuses that work into a few loops. Why it often does not: the matmuls,
which a compile leaves as they are, take much of eager scoring's time on a CPU (how much is
measured, not assumed: the profile section of benchmarks/RESULTS.md), and the compile costs tens
of seconds on 2 cores. So ``auto`` compiles only on a kind of device where a committed measurement
shows a clear gain (:data:`COMPILED_TIME_FRACTION` below :data:`PAYS_BELOW`): on a CPU it measured 0.95
to 1.00 of the eager time, within noise, so ``auto`` stays eager there; a GPU is not measured
yet, so ``auto`` stays eager there too. ``on`` compiles anyway.

What runs compiled: the repeated blocks (decoder layers) of the plain causal forward (the
backbone, no cache) and of the seq2seq encoder + decoder, traced once with **dynamic shapes**, so
one graph serves every layer and every batch (:class:`CompiledBlocks`; the embeddings, the masks
and the final norm stay eager). Around that:

- widths are padded up to a multiple of :data:`BUCKET` tokens (the planner counts that padding,
  :func:`vhctl.scoring.plan.length_batches`), sizes that happen to be equal are traced as distinct
  symbols, and a compiled batch always has some padding (a batch without any gets one more
  bucket), since transformers drops a mask of all ones and the blocks would need a second graph;
  a batch whose padded width would pass the model's position limit (records at the length
  limit) runs eagerly;
- a batch of one row runs eagerly: a dynamic graph specialises a size of 1, and would compile
  another graph for it;
- the passes of prefix sharing and of the prefix cache run eagerly: their blocks update a cache
  object, whose mutation would be traced into the graph with every prompt's shapes.

A persistent compile cache: inductor's on-disk caches go to ``TORCHINDUCTOR_CACHE_DIR`` when it is
set, else ``$XDG_CACHE_HOME/vhctl/inductor`` (``~/.cache/vhctl/inductor``), so the second job on
the same model skips the code generation and C++ builds and only traces one block again.

A failure to compile (an operation inductor cannot lower, no C++ compiler) is not an error: the
call is run again eagerly, one warning line says so, calls of that shape stay eager, and after
:data:`MAX_FAILED_SHAPES` shapes the scorer stays eager. An exception that the eager rerun raises
too is the model's, and is raised as usual.

When ``auto`` compiles on a device where it pays (:class:`CompilePolicy`): when the tokens still to
score are at least :func:`break_even_tokens`, the count at which the time saved pays for the
compile. A file's tokens are estimated as its line count (:func:`estimate_lines`) times the mean
tokens per record seen so far; for an input of unknown length, ``auto`` compiles once the tokens
already scored reach that count. Both rules use token counts, never timings, so the same input
gets the same decision on every run (and on every rank of a data-parallel run).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vhctl.errors import UsageError, first_line

__all__ = [
    "BUCKET",
    "COMPILE_CHOICES",
    "COMPILED_TIME_FRACTION",
    "PAYS_BELOW",
    "MAX_FAILED_SHAPES",
    "CompilePolicy",
    "CompiledBlocks",
    "break_even_tokens",
    "check_compile_choice",
    "compile_pays",
    "estimate_lines",
    "inductor_cache_dir",
    "model_break_even",
    "repeated_blocks",
]

logger = logging.getLogger("vhctl")

COMPILE_CHOICES = ("auto", "on", "off")
BUCKET = 16  # compiled widths are multiples of this many tokens
MAX_FAILED_SHAPES = 4  # shapes whose compile failed before a scorer stops trying to compile

# The first compile costs as much as scoring this many tokens eagerly: GPT-2 124M, 2 threads, on a
# quiet machine 20 s at 741 tok/s and 26 s at 682 tok/s in two runs (benchmarks/RESULTS-compile.md
# has the later one). The compile grows with the layers (in this scaling: regional compilation
# traces one block, so this overstates it for deep models), the eager time per token with the
# parameters. On a GPU an eager token is far cheaper, so the compile is
# worth many more of them (an estimate: not measured on a GPU yet).
COMPILE_COST_TOKENS = {"cpu": 16_000, "cuda": 2_000_000}
_DEFAULT_COST_TOKENS = 500_000
_REFERENCE = (12, 124_000_000)  # layers, backbone parameters of GPT-2 124M
# Compiled passes take this fraction of the eager time, as measured on each kind of device
# (benchmarks/bench_compile.py: eager over compiled tokens/s on mixed lengths, GPT-2 124M and a
# Llama-style 110M): 0.95 to 1.00 on a 2-core CPU (0.95 and 1.00 in benchmarks/RESULTS-compile.md,
# 0.97 and 0.96 in an earlier run whose report was not kept; where the eager time goes: the profile
# in benchmarks/RESULTS.md).
# A kind of device that is not listed has no measurement, and ``auto`` does not compile there.
COMPILED_TIME_FRACTION = {"cpu": 0.97}
# ``auto`` compiles only where the measured fraction is below this: a gain clear of run-to-run noise.
PAYS_BELOW = 0.9
_SAMPLE_BYTES = 1 << 20


def check_compile_choice(value: str) -> str:
    """``auto``, ``on`` or ``off`` (any case).

    Raises:
        UsageError: anything else.
    """
    choice = str(value).strip().lower()
    if choice not in COMPILE_CHOICES:
        raise UsageError(
            f"invalid compile choice {value!r} (--compile, Scorer's compile=)", hint="use auto, on or off"
        )
    return choice


def inductor_cache_dir() -> Path:
    """Where inductor keeps its compiled code: ``TORCHINDUCTOR_CACHE_DIR``, else vhctl's user cache folder."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vhctl" / "inductor"


def compile_pays(device_type: str) -> bool:
    """Whether a measurement says compiled scoring is clearly faster on this kind of device."""
    fraction = COMPILED_TIME_FRACTION.get(device_type)
    return fraction is not None and fraction < PAYS_BELOW


def break_even_tokens(layers: int, parameters: int, device_type: str) -> int | None:
    """Tokens to score above which compiling saves more time than it costs; None: it never does.

    The compile costs ``C`` eager tokens' worth of time (:data:`COMPILE_COST_TOKENS`, scaled from
    GPT-2 124M by layers and by parameters) and saves ``1 - f`` of every token's time after it
    (:data:`COMPILED_TIME_FRACTION`), so it pays from ``C / (1 - f)`` tokens on, where ``f`` was
    measured and is below :data:`PAYS_BELOW`.
    """
    if not compile_pays(device_type):
        return None
    ref_layers, ref_params = _REFERENCE
    cost = COMPILE_COST_TOKENS.get(device_type, _DEFAULT_COST_TOKENS)
    cost_tokens = cost * (max(layers, 1) / ref_layers) * (ref_params / max(parameters, 1))
    return max(1, round(cost_tokens / (1.0 - COMPILED_TIME_FRACTION[device_type])))


def model_break_even(hf: Any, device_type: str) -> int | None:
    """:func:`break_even_tokens` of a transformers model (its layers and parameters)."""
    config = hf.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or _REFERENCE[0]
    if getattr(config, "is_encoder_decoder", False):
        layers += getattr(text, "num_decoder_layers", None) or layers
    parameters = sum(p.numel() for p in hf.parameters())
    return break_even_tokens(int(layers), parameters, device_type)


def estimate_lines(path: str | os.PathLike[str]) -> int | None:
    """The lines of a file: counted when it is at most 1 MiB, else its size over the mean line of the
    first MiB. None when it cannot be read (the caller's own open reports that)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            sample = handle.read(_SAMPLE_BYTES)
    except OSError:
        return None
    lines = sample.count(b"\n") + (1 if sample and not sample.endswith(b"\n") else 0)
    if size <= len(sample) or not lines:
        return lines
    return round(size * lines / len(sample))


class CompilePolicy:
    """Whether each window runs compiled: ``on``, ``off``, or ``auto`` from token counts (see the module).

    Args:
        choice: ``auto``, ``on`` or ``off``.
        break_even: Tokens from which compiling pays (:func:`break_even_tokens`); None: never
            (``auto`` then stays eager).

    Once a window runs compiled, every later one does.
    """

    def __init__(self, choice: str, break_even: int | None) -> None:
        self.choice = check_compile_choice(choice)
        self.break_even = break_even
        self.on = self.choice == "on"
        self.tokens = 0  # scored by this scorer, every input
        self._expected: int | None = None  # records of the current input, when known
        self._records = 0  # of the current input, so far
        self._input_tokens = 0

    def start_input(self, expected_records: int | None) -> None:
        """A new input begins; ``expected_records`` is its length, if known (e.g. a file's lines)."""
        self._expected = expected_records
        self._records = self._input_tokens = 0

    def window(self, tokens: int, records: int) -> bool:
        """Decide for the next window (``tokens`` in ``records``): True runs it compiled."""
        if self.choice == "auto" and not self.on and self.break_even is not None:
            if self._expected is not None:
                mean = (self._input_tokens + tokens) / max(self._records + records, 1)
                remaining = mean * max(self._expected - self._records, records)
                self.on = remaining >= self.break_even
            else:
                self.on = self.tokens >= self.break_even
        self.tokens += tokens
        self._input_tokens += tokens
        self._records += records
        return self.on


class CompiledBlocks:
    """Runs forwards with the model's repeated blocks compiled, eager again when compiling fails.

    Regional compilation: the decoder layers of a model are one class, so one graph traced on the
    first serves them all (the embeddings, masks and final norm run eagerly around it). Tracing one
    block instead of the whole unrolled stack makes the first compile several times shorter, and a
    second start, whose code comes from the on-disk cache, shorter still.

    Args:
        roots: The modules whose repeated blocks run compiled (the backbone; an encoder and decoder).
        what: What runs compiled, for the warning.

    Attributes:
        usable: Blocks were found, and this torch can run a module compiled.
        failed: A compile failed: everything runs eagerly from then on.
    """

    def __init__(self, roots: list[Any], what: str) -> None:
        self.blocks = [block for root in roots for block in repeated_blocks(root)]
        self.what = what
        self.usable = bool(self.blocks) and all(hasattr(b, "_compiled_call_impl") for b in self.blocks)
        self.failed = False
        self.failed_shapes: set[tuple[tuple[int, ...], ...]] = set()
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` with the blocks compiled; eagerly where that is not possible.

        A compile that fails runs that call again eagerly and warns once; calls of the same shapes
        run eagerly from then on, other shapes still try the compiled graph, and after
        :data:`MAX_FAILED_SHAPES` failed shapes everything runs eagerly.
        """
        shape = tuple(tuple(getattr(arg, "shape", ())) for arg in args)
        if self.failed or not self.usable or shape in self.failed_shapes:
            return function(*args)
        try:
            with self._installed(), _distinct_sizes():
                return function(*args)
        except Exception as exc:  # the compiler's, or the model's: the eager rerun tells which
            result = function(*args)  # raises the model's own error
            if not self.failed_shapes:
                logger.warning(
                    "could not compile %s (%s); scoring these shapes without compiling",
                    self.what, first_line(exc)[:200],
                )  # fmt: skip
            self.failed_shapes.add(shape)
            self.failed = len(self.failed_shapes) >= MAX_FAILED_SHAPES
            return result

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        """Each block calls the compiled graph inside the block (what ``Module.compile`` does, undone after)."""
        if self._compiled is None:
            self._compiled = _compile_modules()
        previous = [block._compiled_call_impl for block in self.blocks]
        for block in self.blocks:
            block._compiled_call_impl = functools.partial(self._compiled, block)
        try:
            yield
        finally:
            for block, before in zip(self.blocks, previous, strict=True):
                block._compiled_call_impl = before


def repeated_blocks(root: Any) -> list[Any]:
    """The longest list of modules of one class under ``root`` (a model's decoder layers), or []."""
    import torch

    best: list[Any] = []
    for module in root.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            if len({type(block) for block in module}) == 1:
                best = list(module)
    return best


def _distinct_sizes() -> contextlib.AbstractContextManager[Any]:
    """Trace sizes that happen to be equal as distinct symbols: a batch of 16 rows of 16 tokens,
    or equal encoder and decoder widths, must not make later shapes recompile (duck sizing)."""
    try:
        from torch.fx.experimental import _config as fx_config

        patched: contextlib.AbstractContextManager[Any] = fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]
        return patched
    except (ImportError, AttributeError):  # an older torch: duck sizing stays on
        return contextlib.nullcontext()


def _compile_modules() -> Callable[..., Any]:
    """A module call (``Module._call_impl``, hooks included) compiled with dynamic shapes, its
    on-disk caches in :func:`inductor_cache_dir`."""
    import torch

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    return torch.compile(torch.nn.Module._call_impl, dynamic=True)
