"""Rebuild the embedded tiny model "vhctl:tiny" from nothing, offline and deterministically.

Run ``python -m vhctl._tiny.build`` (or ``--out DIR`` to build elsewhere). The files are
committed, so users never run this; it exists so that anyone can see exactly how the
weights and the tokenizer were made and check that rebuilding gives the same bytes.

Recipe:

1. a byte-level BPE tokenizer (the GPT-2 pipeline: ByteLevel pre-tokenizer without prefix
   space, ByteLevel decoder) trained with ``tokenizers`` on :func:`corpus_lines`, a small
   English corpus written into this module (no download, no dependence on the Python
   version's own docs), vocabulary :data:`VOCAB_SIZE` including ``<|endoftext|>`` (id 0);
2. wrapped as a ``transformers`` GPT-2 fast tokenizer whose bos, eos, unk and pad tokens are
   ``<|endoftext|>`` and that carries :data:`CHAT_TEMPLATE`;
3. a GPT-2 (``n_embd`` 64, 4 layers, 4 heads, 512 positions, tied embeddings, no dropout) with random
   weights drawn after ``torch.manual_seed(0)``; it is untrained: its values mean nothing,
   it only has to load, run and be small (about 1.2 MB in float32);
4. everything saved with ``save_pretrained`` (safetensors; tokenizer in the unified
   ``tokenizer.json`` format with the chat template kept in ``tokenizer_config.json``),
   plus :data:`BUILD_INFO_NAME`, the library versions and file hashes of the build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

__all__ = [
    "BUILD_INFO_NAME",
    "CHAT_TEMPLATE",
    "N_EMBD",
    "N_HEAD",
    "N_LAYER",
    "N_POSITIONS",
    "OUTPUT_FILES",
    "SEED",
    "SPECIAL_TOKEN",
    "VOCAB_SIZE",
    "build",
    "build_model",
    "build_tokenizer",
    "corpus_lines",
    "main",
    "read_build_info",
    "train_tokenizer",
]

VOCAB_SIZE = 1024
SPECIAL_TOKEN = "<|endoftext|>"
N_EMBD = 64
N_LAYER = 4
N_HEAD = 4
N_POSITIONS = 512
SEED = 0

# Roles become plain text markers; each turn ends with the eos token, and the generation
# prompt opens an assistant turn. No bos token, so chat and plain text tokenize alike.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\n' }}{% endif %}{{ '<|assistant|>\n' }}"
    "{% endif %}"
)

# What the build writes (nothing else in the folder is touched).
OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
BUILD_INFO_NAME = "BUILD.txt"

_PARAGRAPHS = """\
The small model in this folder was never trained. Its weights are random numbers drawn from a fixed seed, so
it writes nonsense, but it loads in a blink and runs on any computer. That is all a test needs.
A value head is a single linear layer that reads the last hidden state of a language model and returns one
number for every token. During training with reinforcement learning, that number estimates how good the rest
of the answer will be. People call this part of the system the critic, and the language model the policy.
Before a model is tuned with human feedback, a reference copy is frozen. The trainer compares the two and keeps
the new policy from drifting too far away from the old one, which keeps the text fluent and the reward honest.
A reward model reads a prompt and a response and gives a score. Good answers get a high score, while rude,
wrong or useless answers get a low one. The score is only as good as the data that people labelled by hand.
Checkpoints are folders of files. There is a configuration, a file of weights, a tokenizer and a short manifest
that lists every file with its size and its hash, so that a broken download or a changed file is found at once.
On Monday morning the library opened at nine o'clock. Children ran between the shelves, an old man read the
newspaper by the window, and the librarian stamped a tall pile of books that had come back over the weekend.
The river was high after three days of rain. Farmers moved their sheep to the hills, and the ferry stopped
running until the water went down. By Friday the sun came out and the roads were dry again.
She wrote the letter twice, because the first version sounded angry. The second one was calm and short: thank
you for the offer, I need a few more days to think, and I will call you on Thursday afternoon.
Water boils at one hundred degrees at sea level, but at lower temperatures on a high mountain, where the air
pressure is lower. This is why cooking pasta takes longer in a village that sits two thousand metres up.
Light from the sun takes about eight minutes to reach the earth. The moon is much closer, and its light, which
is only reflected sunlight, arrives in a little more than one second.
A good function does one thing and has a name that says what that thing is. It checks its input, returns a
value or raises a clear error, and never prints to the screen when it is called from a library.
When the tests pass on every computer and not just on yours, you can trust them. Fix the random seed, avoid
the network, write each file into its own temporary folder, and never depend on the time of day.
The recipe is simple. Mix the flour, salt and water, leave the dough to rest for an hour, then shape it into a
round loaf and bake it in a hot oven for forty minutes until the crust is brown and sounds hollow.
He asked the way to the station. Go straight on, turn left at the bakery, cross the bridge and you will see it
on your right, next to the post office. It is a ten minute walk, or two stops on the bus.
Questions and answers: What is the capital of France? Paris. How many legs does a spider have? Eight. Which
planet is the largest? Jupiter. Who wrote the play Hamlet? William Shakespeare. Why is the sky blue? Because
air scatters blue light more than red light.
Every number can be written with digits: 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9. The year 2024 had 366 days, a
week has 7 days, and 12 times 12 is 144. Prices went up by 3.5 percent, from $19.99 to $20.69.
"""

# fmt: off
_SUBJECTS = (
    "The model", "A student", "My neighbour", "The teacher", "Our team", "The old dog", "A young writer",
    "The computer", "This policy", "The critic", "Every engineer", "The reward model", "A small child",
    "The doctor", "Her brother", "The city council", "A careful reader", "The training loop",
)
_VERBS = (
    "reads", "writes", "checks", "finds", "loves", "builds", "opens", "saves", "loads", "counts",
    "answers", "explains", "compares", "scores", "learns", "remembers", "forgets", "shares",
)
_OBJECTS = (
    "the long report", "a short answer", "every question", "the red apple", "a quiet garden", "the final score",
    "the hidden state", "a new checkpoint", "the value head", "the tokenizer", "a sunny morning",
    "the weekly market", "an open window", "the missing file", "a simple test", "the first page",
)
_TAILS = (
    "before lunch", "without a word", "with great care", "every single day", "in the evening",
    "after the meeting", "at the station", "for the first time", "in a hurry", "on the table",
    "by the river", "under the bridge", "once again", "all night long",
)
_PROMPTS = (
    "What is a value head?",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "Give me three names for a cat.",
    "Why do leaves change colour in autumn?",
    "Translate good morning into French.",
    "What is two plus two?",
    "Summarise the story in one sentence.",
)
_REPLIES = (
    "It is a small linear layer that predicts one number for each token.",
    "The waves roll in, the gulls cry out, and the salt wind carries them away.",
    "Put the egg in boiling water for seven minutes, then cool it in cold water.",
    "Milo, Luna and Pepper.",
    "The green pigment breaks down and the yellow and red colours show through.",
    "Bonjour.",
    "Two plus two is four.",
    "A lost dog finds its way home after a long journey through the hills.",
)
# fmt: on


def corpus_lines() -> list[str]:
    """The training text, built from fixed strings only so every machine gets the same corpus.

    Returns:
        A list of lines: hand-written paragraphs, simple sentences from word lists (walked with
        coprime strides, no random generator), chat transcripts in :data:`CHAT_TEMPLATE`'s
        format, and some numbers.
    """
    lines = _PARAGRAPHS.splitlines()
    for i in range(720):
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        verb = _VERBS[(i * 5) % len(_VERBS)]
        obj = _OBJECTS[(i * 7) % len(_OBJECTS)]
        tail = _TAILS[(i * 11) % len(_TAILS)]
        end = "?" if i % 9 == 0 else "!" if i % 13 == 0 else "."
        lines.append(f"{subject} {verb} {obj} {tail}{end}")
    for i in range(len(_PROMPTS) * 3):
        prompt = _PROMPTS[i % len(_PROMPTS)]
        reply = _REPLIES[(i * 3) % len(_REPLIES)] if i >= len(_PROMPTS) else _REPLIES[i]
        lines.append(f"<|system|>\nYou are a helpful assistant.{SPECIAL_TOKEN}")
        lines.append(f"<|user|>\n{prompt}{SPECIAL_TOKEN}")
        lines.append(f"<|assistant|>\n{reply}{SPECIAL_TOKEN}")
        lines.append(f'{{"id": {i}, "prompt": "{prompt}", "response": "{reply}"}}')
    for i in range(200):
        lines.append(
            f"Item {i}: {i * 37 % 1000} units at {i * 13 % 97}.{i % 10}0 each, total {i * 481 % 10007}."
        )
    return lines


def train_tokenizer(lines: Sequence[str] | None = None, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE (``tokenizers.Tokenizer``) on ``lines`` (default :func:`corpus_lines`).

    The pipeline is the one ``transformers``' GPT-2 tokenizer rebuilds from a vocabulary and
    merges, so the saved ``tokenizer.json`` means the same thing whichever way it is loaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus_lines() if lines is None else lines), trainer=trainer)
    return tokenizer


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The ``transformers`` fast tokenizer shipped with the tiny model (see module docstring)."""
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # lazily exported

    trained = json.loads(train_tokenizer().to_str())["model"]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in trained["merges"]]
    return GPT2TokenizerFast(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=SPECIAL_TOKEN,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        add_prefix_space=False,
        model_max_length=N_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(vocab_size: int, eos_token_id: int) -> GPT2LMHeadModel:
    """A GPT-2 with random weights from ``torch.manual_seed(SEED)``, in float32, in eval mode."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_positions=N_POSITIONS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config).float().eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id
    )
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_info(folder: Path) -> str:
    """Versions that produced the bytes, and the files' hashes: a rebuild matches only on these versions."""
    import tokenizers
    import torch
    import transformers

    lines = [
        "vhctl:tiny build record (python -m vhctl._tiny.build)",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        f"tokenizers {tokenizers.__version__}",
    ]
    lines += [f"sha256 {_sha256(folder / name)} {name}" for name in OUTPUT_FILES]
    return "\n".join(lines) + "\n"


def read_build_info(folder: Path) -> dict[str, str]:
    """Parse :data:`BUILD_INFO_NAME`: library name -> version and file name -> sha256."""
    info: dict[str, str] = {}
    for line in (folder / BUILD_INFO_NAME).read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(" ")
        if parts[0] == "sha256" and len(parts) == 3:
            info[parts[2]] = parts[1]
        elif len(parts) == 2:
            info[parts[0]] = parts[1]
    return info


def build(out: Path) -> list[Path]:
    """Build the tiny model into ``out`` (created if missing) and return the files written.

    Files are first written to a temporary folder, so a failed build leaves ``out`` as it was,
    and only :data:`OUTPUT_FILES` and :data:`BUILD_INFO_NAME` are replaced in ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory(prefix=".vhctl-tiny-", dir=out) as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging, legacy_format=False, save_jinja_files=False)
        unexpected = sorted(p.name for p in staging.iterdir() if p.name not in OUTPUT_FILES)
        missing = sorted(name for name in OUTPUT_FILES if not (staging / name).is_file())
        if unexpected or missing:
            raise RuntimeError(
                f"save_pretrained wrote an unexpected set of files (extra {unexpected}, missing {missing}); "
                "update OUTPUT_FILES in vhctl/_tiny/build.py for this transformers version"
            )
        (staging / BUILD_INFO_NAME).write_text(_build_info(staging), encoding="utf-8")
        written = []
        for name in (*OUTPUT_FILES, BUILD_INFO_NAME):
            shutil.copyfile(staging / name, out / name)
            written.append(out / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build into the package folder or ``--out``; list what was written."""
    parser = argparse.ArgumentParser(prog="python -m vhctl._tiny.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for path in build(args.out):
        print(f"{path.stat().st_size:>9}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
