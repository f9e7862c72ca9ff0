"""Every bad input gets one clear error line, the documented exit code, no traceback, nothing written.

A table of cases, each run through the real CLI (Typer's CliRunner, in-process). For each one:

- the exit code is the documented one (1: the work or a check failed, 2: bad usage);
- stderr holds exactly one ``Error:`` line, naming the culprit (for Click's own parsing errors the
  standard ``Usage:``/``Try ... -h`` lines come before it), and nothing else;
- no ``Traceback`` anywhere;
- nothing was written: the case's work folder, and the shared inputs, are byte-for-byte as before
  (no destination, no ``.vhctl-tmp-*`` leftover).

Cases needing a real mount (read-only folder, full disk) mount a small tmpfs; they run as root only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import make_reward_adapter, save_tiny_model, tiny_lora_config
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.constants import MANIFEST_NAME, PT_WEIGHTS_NAME
from vhctl.ops.make_ref import make_reference
from vhctl.ops.wrap import wrap_model

runner = CliRunner()


# -- shared inputs (never written to: checked after every case) ------------------------------------
@dataclass
class World:
    root: Path
    base: Path  # a tiny GPT-2 model folder
    ckpt: Path  # wrap of base
    ckpt_ref: Path  # ckpt + make-ref --shared 1
    rm: Path  # reward adapter for base
    rm_llama: Path  # reward adapter for a llama base
    lora_no_score: Path  # a CAUSAL_LM LoRA adapter (no score head)
    rm_pickle: Path  # a reward adapter saved as adapter_model.bin only
    bert: Path  # an encoder-only model
    pickle_model: Path  # config + pytorch_model.bin only
    not_model: Path  # a folder with a text file
    adapter_only: Path  # a PEFT adapter folder given as a model
    no_weights: Path  # config.json only
    bad_config: Path  # config.json that is not JSON
    unknown_type: Path  # config.json with an unknown model_type
    a_file: Path  # a plain file


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("bad-input-world")
    base = save_tiny_model("gpt2", root / "base")
    ckpt = root / "ckpt"
    wrap_model(str(base), ckpt, seed=0)
    ckpt_ref = root / "ckpt_ref"
    shutil.copytree(ckpt, ckpt_ref)
    make_reference(ckpt_ref, num_shared_layers=1)
    rm = make_reward_adapter("gpt2", root / "rm", base)
    llama = save_tiny_model("llama", root / "llama")
    rm_llama = make_reward_adapter("llama", root / "rm_llama", llama)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), tiny_lora_config("gpt2"))
    lora.save_pretrained(root / "lora_no_score")
    rm_pickle = root / "rm_pickle"
    shutil.copytree(rm, rm_pickle)
    from safetensors.torch import load_file

    torch.save(load_file(str(rm_pickle / "adapter_model.safetensors")), rm_pickle / "adapter_model.bin")
    (rm_pickle / "adapter_model.safetensors").unlink()
    bert = root / "bert"
    BertForMaskedLM(
        BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(bert)
    pickle_model = root / "pickle_model"
    pickle_model.mkdir()
    shutil.copyfile(base / "config.json", pickle_model / "config.json")
    torch.save(AutoModelForCausalLM.from_pretrained(base).state_dict(), pickle_model / PT_WEIGHTS_NAME)
    not_model = root / "not_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    no_weights = root / "no_weights"
    no_weights.mkdir()
    shutil.copyfile(base / "config.json", no_weights / "config.json")
    bad_config = root / "bad_config"
    shutil.copytree(base, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "gpt2",')
    unknown_type = root / "unknown_type"
    shutil.copytree(base, unknown_type)
    config = json.loads((unknown_type / "config.json").read_text())
    config["model_type"] = "no-such-model"
    (unknown_type / "config.json").write_text(json.dumps(config))
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder")
    return World(
        root,
        base,
        ckpt,
        ckpt_ref,
        rm,
        rm_llama,
        root / "lora_no_score",
        rm_pickle,
        bert,
        pickle_model,
        not_model,
        rm,
        no_weights,
        bad_config,
        unknown_type,
        a_file,
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the sha256 of files ("dir" for folders, the target for links)."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- mounts (root only) -----------------------------------------------------------------------------
@pytest.fixture
def mounts() -> Iterator[Callable[[Path, str], Path]]:
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip(
                "needs root to mount a tmpfs (read-only or tiny); as a user these errors cannot be staged"
            )
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- the table ----------------------------------------------------------------------------------------
@dataclass
class Case:
    """``args`` gets (world, work, mount) and returns the command line; ``needle`` is the culprit."""

    args: Callable[..., list[str]]
    code: int
    needle: str | Callable[[World, Path], str]
    stdin: bytes | None = None


def _copy(src: Path, work: Path, name: str = "ck") -> Path:
    dst = work / name
    shutil.copytree(src, dst)
    return dst


def _ck(w: World, work: Path) -> str:
    return str(_copy(w.ckpt, work))


def _full_disk_wrap(w: World, work: Path, mount: Callable[[Path, str], Path]) -> list[str]:
    return ["wrap", str(w.base), "--out", str(mount(work / "full", "size=200k") / "ck")]


def _full_disk_make_ref(w: World, work: Path, mount: Callable[[Path, str], Path]) -> list[str]:
    # Room for the checkpoint and a bit more, not for its reference.
    size = sum(p.stat().st_size for p in w.ckpt.rglob("*") if p.is_file())
    disk = mount(work / "full", f"size={size // 1024 + 64}k")
    shutil.copytree(w.ckpt, disk / "ck")
    return ["make-ref", str(disk / "ck")]


def _read_only(w: World, work: Path, mount: Callable[[Path, str], Path]) -> list[str]:
    return ["wrap", str(w.base), "--out", str(mount(work / "ro", "ro,size=64k") / "ck")]


def _read_only_make_ref(w: World, work: Path, mount: Callable[[Path, str], Path]) -> list[str]:
    ck = _copy(w.ckpt, work)
    return ["make-ref", str(ck), "--out", str(mount(work / "ro", "ro,size=64k") / "ref")]


def _file_as_out(w: World, work: Path) -> list[str]:
    (work / "out.txt").write_text("x")
    return ["wrap", str(w.base), "--out", str(work / "out.txt")]


def _file_in_out_path(w: World, work: Path) -> list[str]:
    (work / "out.txt").write_text("x")
    return ["wrap", str(w.base), "--out", str(work / "out.txt" / "ck")]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_manifest(w: World, work: Path) -> list[str]:
    ck = _copy(w.ckpt, work)
    (ck / MANIFEST_NAME).write_bytes(b"\xff\xfe{not json")
    return ["info", str(ck)]


def _manifest_future(w: World, work: Path) -> list[str]:
    ck = _copy(w.ckpt, work)
    data = json.loads((ck / MANIFEST_NAME).read_text())
    data["format_version"] = 99
    (ck / MANIFEST_NAME).write_text(json.dumps(data))
    return ["make-ref", str(ck)]


CASES: dict[str, Case] = {
    # wrap: the source
    "wrap: nonexistent path": Case(lambda w, d: ["wrap", str(d / "nope"), "--out", str(d / "x")], 1, "nope"),
    "wrap: folder that is not a model": Case(
        lambda w, d: ["wrap", str(w.not_model), "--out", str(d / "x")], 1, "config.json"
    ),
    "wrap: hub id offline, not cached": Case(
        lambda w, d: ["wrap", "someone/no-such-model", "--out", str(d / "x")], 1, "someone/no-such-model"
    ),
    "wrap: encoder-only model": Case(
        lambda w, d: ["wrap", str(w.bert), "--out", str(d / "x")], 1, "encoder-only"
    ),
    "wrap: PEFT adapter given as a model": Case(
        lambda w, d: ["wrap", str(w.adapter_only), "--out", str(d / "x")], 1, "PEFT adapter"
    ),
    "wrap: config but no weights": Case(
        lambda w, d: ["wrap", str(w.no_weights), "--out", str(d / "x")], 1, "no weights"
    ),
    "wrap: pickle-only weights without --allow-pickle": Case(
        lambda w, d: ["wrap", str(w.pickle_model), "--out", str(d / "x")], 1, "pickle"
    ),
    "wrap: config.json is not JSON": Case(
        lambda w, d: ["wrap", str(w.bad_config), "--out", str(d / "x")], 1, "config.json"
    ),
    "wrap: unknown model type": Case(
        lambda w, d: ["wrap", str(w.unknown_type), "--out", str(d / "x")], 1, "no-such-model"
    ),
    # wrap: the options
    "wrap: unknown --init": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--init", "xavier"], 2, "xavier"
    ),
    "wrap: negative --std": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--init", "normal", "--std", "-0.5"],
        2,
        "--std",
    ),
    "wrap: NaN --std": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--init", "normal", "--std", "nan"],
        2,
        "--std",
    ),
    "wrap: --std not a number": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--std", "abc"], 2, "--std"
    ),
    "wrap: --dropout out of range": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--dropout", "1.5"], 2, "--dropout"
    ),
    "wrap: unknown --dtype": Case(
        lambda w, d: ["wrap", str(w.base), "--out", str(d / "x"), "--dtype", "int8"], 2, "int8"
    ),
    "wrap: missing --out": Case(lambda w, d: ["wrap", str(w.base)], 2, "--out"),
    # wrap: the destination
    "wrap: --out is a file": Case(_file_as_out, 2, "out.txt"),
    "wrap: --out under a file": Case(_file_in_out_path, 1, "out.txt"),
    "wrap: --out exists, no --force": Case(
        lambda w, d: ["wrap", str(w.base), "--out", _ck(w, d)], 1, "--force"
    ),
    "wrap: --out inside the source": Case(
        lambda w, d: ["wrap", str(_copy(w.base, d, "m")), "--out", str(d / "m" / "ck")],
        2,
        "inside the source",
    ),
    "wrap: no write permission (read-only mount)": Case(_read_only, 1, "/ro"),
    "wrap: full disk": Case(_full_disk_wrap, 1, "no space left"),
    # make-ref
    "make-ref: nonexistent checkpoint": Case(lambda w, d: ["make-ref", str(d / "nope")], 1, "nope"),
    "make-ref: folder that is not a checkpoint": Case(
        lambda w, d: ["make-ref", str(w.not_model)], 1, MANIFEST_NAME
    ),
    "make-ref: --shared out of range": Case(lambda w, d: ["make-ref", _ck(w, d), "--shared", "7"], 2, "7"),
    "make-ref: negative --shared": Case(
        lambda w, d: ["make-ref", _ck(w, d), "--shared", "-1"], 2, "--shared"
    ),
    "make-ref: --pattern without --shared": Case(
        lambda w, d: ["make-ref", _ck(w, d), "--pattern", "transformer.h.{layer}"], 2, "--pattern"
    ),
    "make-ref: --pattern matching nothing": Case(
        lambda w, d: ["make-ref", _ck(w, d), "--shared", "1", "--pattern", "blocks.{layer}"],
        2,
        "blocks.{layer}",
    ),
    "make-ref: from a reference": Case(
        lambda w, d: ["make-ref", str(_copy(w.ckpt_ref, d) / "ref")], 2, "reference"
    ),
    "make-ref: --out is a file": Case(
        lambda w, d: ["make-ref", _ck(w, d), "--out", str(w.a_file)], 2, "a_file.txt"
    ),
    "make-ref: reference exists, no --force": Case(
        lambda w, d: ["make-ref", str(_copy(w.ckpt_ref, d))], 1, "--force"
    ),
    "make-ref: manifest from a newer vhctl": Case(_manifest_future, 1, "format_version"),
    "make-ref: no write permission (read-only mount)": Case(_read_only_make_ref, 1, "/ro"),
    "make-ref: full disk": Case(_full_disk_make_ref, 1, "no space left"),
    # attach-reward-adapter
    "attach: adapter for another base": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.rm_llama)], 1, "rm_llama"
    ),
    "attach: nonexistent adapter": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(d / "nope")], 1, "nope"
    ),
    "attach: folder that is not an adapter": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.not_model)], 1, "not a PEFT adapter"
    ),
    "attach: adapter without a score head": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.lora_no_score)], 1, "score"
    ),
    "attach: pickle adapter without --allow-pickle": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.rm_pickle)], 1, "pickle"
    ),
    "attach: adapter name escaping (..)": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.rm), "--name", "../evil"], 1, "../evil"
    ),
    "attach: adapter name absolute": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.rm), "--name", "/tmp/evil"], 1, "/tmp/evil"
    ),
    "attach: adapter name nested": Case(
        lambda w, d: ["attach-reward-adapter", _ck(w, d), str(w.rm), "--name", "a/b"], 1, "a/b"
    ),
    "attach: to a folder that is not a checkpoint": Case(
        lambda w, d: ["attach-reward-adapter", str(w.not_model), str(w.rm)], 1, MANIFEST_NAME
    ),
    "attach: to a reference": Case(
        lambda w, d: ["attach-reward-adapter", str(_copy(w.ckpt_ref, d) / "ref"), str(w.rm)], 2, "reference"
    ),
    # validate / info / push
    "validate: nonexistent path": Case(lambda w, d: ["validate", str(d / "nope")], 1, "nope"),
    "validate: a file": Case(lambda w, d: ["validate", str(w.a_file)], 1, "a_file.txt"),
    "info: folder that is not a checkpoint": Case(lambda w, d: ["info", str(w.not_model)], 1, MANIFEST_NAME),
    "info: manifest is not UTF-8 JSON": Case(_corrupt_manifest, 1, MANIFEST_NAME),
    # push prints progress ("validating ...") on stderr before it fails; -q keeps only the error.
    "push: invalid repo id": Case(
        lambda w, d: ["-q", "push", _ck(w, d), "not a repo id!", "--dry-run"], 2, "not a repo id!"
    ),
    "push: folder that is not a checkpoint": Case(
        lambda w, d: ["-q", "push", str(w.not_model), "user/repo", "--dry-run"], 1, "not_model"
    ),
    "unknown command": Case(lambda w, d: ["frobnicate"], 2, "frobnicate"),
    # score: the input
    "score: malformed JSON on line 3": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "line 3", stdin=b'hello\n{"text": "a"}\n{bad json\nmore\n'
    ),
    "score: non-UTF-8 bytes on stdin": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "line 2", stdin=b"fine\n\xff\xfe\xfd caf\xe9\n"
    ),
    "score: JSON line without the expected field": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "line 1", stdin=b'{"txt": "typo"}\n'
    ),
    "score: response without prompt": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "prompt", stdin=b'{"response": "hi"}\n'
    ),
    "score: lone surrogate escape": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "line 1", stdin=b'{"text": "\\ud800"}\n'
    ),
    "score: messages not a list": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "messages", stdin=b'{"messages": "hi"}\n'
    ),
    "score: a 1 MB line of broken JSON": Case(
        lambda w, d: ["score", str(w.ckpt)], 1, "line 1", stdin=b'{"text": "' + b"a" * 1_000_000 + b"\n"
    ),
    "score: bad line in --input FILE": Case(
        lambda w, d: [
            "score",
            str(w.ckpt),
            "--input",
            str(_write(d / "in.jsonl", b'{"text": "a"}\n{"text": 3}\n')),
        ],
        1,
        "line 2",
    ),
    # score: the options and the checkpoint
    "score: --input does not exist": Case(
        lambda w, d: ["score", str(w.ckpt), "--input", str(d / "nope.jsonl")], 2, "nope.jsonl", stdin=b""
    ),
    "score: nonexistent checkpoint": Case(lambda w, d: ["score", str(d / "nope")], 1, "nope", stdin=b"hi\n"),
    "score: folder that is not a model": Case(
        lambda w, d: ["score", str(w.not_model)], 1, "not_model", stdin=b"hi\n"
    ),
    "score: --reward-adapter NAME not attached": Case(
        lambda w, d: ["score", str(w.ckpt), "--reward-adapter", "judge"], 2, "reward", stdin=b"hi\n"
    ),
    "score: --batch-size 0": Case(
        lambda w, d: ["score", str(w.ckpt), "--batch-size", "0"], 2, "--batch-size"
    ),
    "score: --max-length 0": Case(
        lambda w, d: ["score", str(w.ckpt), "--max-length", "0"], 2, "--max-length"
    ),
    "score: --max-length over the model's limit": Case(
        lambda w, d: ["score", str(w.ckpt), "--max-length", "100000"], 2, "100000", stdin=b"hi\n"
    ),
    "score: unknown --dtype": Case(
        lambda w, d: ["score", str(w.ckpt), "--dtype", "int8"], 2, "int8", stdin=b""
    ),
    "score: unknown --device": Case(
        lambda w, d: ["score", str(w.ckpt), "--device", "tpu"], 2, "tpu", stdin=b""
    ),
}
if not torch.cuda.is_available():
    CASES["score: --device cuda without CUDA"] = Case(
        lambda w, d: ["score", str(w.ckpt), "--device", "cuda"], 2, "cuda", stdin=b"hi\n"
    )


def check_error(result, code: int, needle: str) -> str:
    """The checks every bad input must pass; returns the error line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, lines
    others = [line for line in lines if not line.startswith("Error:")]
    if others:  # only Click's usage lines, only for its own parsing errors
        assert code == 2 and all(line.startswith(("Usage:", "Try ")) for line in others), lines
    assert needle in errors[0], (needle, errors[0])
    assert len(errors[0]) < 600, "the error line quotes too much of the input"
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, world: World, tmp_path: Path, mounts: Callable[[Path, str], Path]) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    args = case.args(world, work, mounts) if case.args.__code__.co_argcount == 3 else case.args(world, work)
    before_world, before_work = snapshot(world.root), snapshot(work)
    result = runner.invoke(app, args, input=case.stdin)
    needle = case.needle(world, work) if callable(case.needle) else case.needle
    check_error(result, case.code, needle)
    assert snapshot(work) == before_work, "something was written"
    assert snapshot(world.root) == before_world, "an input was changed"


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 30


# -- inputs that are odd but fine: no error, no traceback --------------------------------------------
def test_score_empty_stdin(world: World) -> None:
    result = runner.invoke(app, ["score", str(world.ckpt)], input=b"")
    assert result.exit_code == 0 and result.stdout == "" and "Traceback" not in result.stderr
    assert "0 line(s)" in result.stderr


def test_score_a_single_1mb_line(world: World) -> None:
    """A 1 MB line keeps its last --max-length tokens (the value at the end is what counts)."""
    result = runner.invoke(app, ["score", str(world.ckpt)], input=b"word " * 200_000 + b"\n")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 1 and isinstance(records[0]["value"], float)
    assert "longer than" in result.stderr and "Traceback" not in result.stderr
