"""Data-parallel scoring (torchrun / accelerate launch) and models spread by a device map.

The 2-process tests run ``torchrun --nproc-per-node 2 -m vhctl score`` on CPU (gloo) and compare
its stdout byte for byte with a single process's, both at one thread per process.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import (
    local_window_value_model,
    make_reward_adapter,
    save_tiny_model,
    tiny_lora_config,
    tiny_tokenizer,
)
from helpers.torchrun import torchrun_command, torchrun_env
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.cli.app import app
from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record, iter_records
from vhctl.scoring import Scorer
from vhctl.scoring.distributed import Launch, backend_for, launch_from_env, local_device

runner = CliRunner()
WORDS = "the quick brown fox jumps over a lazy dog while critics value heads and rewards score tokens".split()


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def mixed_lines(n: int, seed: int = 0) -> list[str]:
    """Texts, prompt + response lines (prompts repeated, not consecutively) and chat lines, with ids."""
    rng = random.Random(seed)
    prompts = [words(rng, 2, 14) for _ in range(6)]
    lines = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.35:
            lines.append(json.dumps({"id": i, "text": words(rng, 1, 40)}))
        elif kind < 0.8:
            row = {"id": f"p{i}", "prompt": rng.choice(prompts), "response": " " + words(rng, 1, 12)}
            lines.append(json.dumps(row))
        elif kind < 0.9:
            chat = [
                {"role": "user", "content": rng.choice(prompts)},
                {"role": "assistant", "content": words(rng, 1, 8)},
            ]
            lines.append(json.dumps({"messages": chat}))
        else:
            lines.append(words(rng, 1, 20))  # a plain text line, no id
    return lines


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt


# ---------------------------------------------------------------------------- launcher environment


def test_launch_from_env() -> None:
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    assert launch_from_env(env) == Launch(rank=3, world=4, local_rank=1, local_world=2)
    with pytest.raises(UsageError, match="MASTER_ADDR is not set"):
        launch_from_env({**env, "MASTER_ADDR": ""})
    with pytest.raises(UsageError, match="RANK is not set"):
        launch_from_env({k: v for k, v in env.items() if k != "RANK"})
    with pytest.raises(UsageError, match="outside 0..3"):
        launch_from_env({**env, "RANK": "4"})
    with pytest.raises(UsageError, match="not an integer"):
        launch_from_env({**env, "WORLD_SIZE": "two"})


def test_backend_and_local_device() -> None:
    assert backend_for(False) == "gloo" and backend_for(True) == "cpu:gloo,cuda:nccl"
    launch = Launch(rank=3, world=4, local_rank=1, local_world=2)
    assert local_device("cpu", launch) == "cpu"
    assert local_device("cuda", launch) == "cuda:1"
    assert local_device("cuda:0", launch) == "cuda:0"
    assert local_device("auto", launch) == ("cuda:1" if torch.cuda.is_available() else "auto")


# ---------------------------------------------------------------------------- the shard, in threads


def run_sharded(models, tokenizer, records, **kwargs):
    """Run one Scorer per rank in threads, with an all-gather made of a barrier; return each rank's results.

    ``records``: a list (each rank scores a copy) or a function that makes each rank's record stream.
    """
    world = len(models)
    barrier = threading.Barrier(world, timeout=120)
    slots: list[object] = [None] * world
    outcome: list[object] = [None] * world
    computed = [0] * world

    def work(rank: int) -> None:
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            everyone = list(slots)
            barrier.wait()
            return everyone

        scorer = Scorer(models[rank], tokenizer, shard=(rank, world), gather=gather, **kwargs)
        queue = scorer._queue

        def counting(batch, *args, **kw):
            computed[rank] += len(batch)
            return queue(batch, *args, **kw)

        scorer._queue = counting
        out: list[dict] = []
        try:
            source = records() if callable(records) else copy.deepcopy(records)
            for result in scorer.score(source):
                out.append(result)
        except InputError as exc:
            outcome[rank] = (out, str(exc))
            return
        except BaseException:
            barrier.abort()
            raise
        outcome[rank] = (out, None)

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(item is not None for item in outcome), "a rank failed"
    return outcome, computed


def single(model, tokenizer, records, **kwargs):
    out: list[dict] = []
    try:
        source = copy.deepcopy(records) if isinstance(records, list) else records
        for result in Scorer(model, tokenizer, **kwargs).score(source):
            out.append(result)
    except InputError as exc:
        return out, str(exc)
    return out, None


def as_bytes(results: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in results)


def records_of(lines: list[str], skip_bad: bool = False) -> list[Record]:
    return list(iter_records([line + "\n" for line in lines], skip_bad=skip_bad))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_scorer_gives_the_single_process_bytes(ckpt, world) -> None:
    from vhctl.modeling import load_checkpoint

    model = load_checkpoint(str(ckpt)).eval()
    tok = tiny_tokenizer()
    records = records_of(mixed_lines(90, seed=world))
    kwargs = {"batch_size": 2, "window": 40, "per_token": True}
    expected, _ = single(model, tok, records, **kwargs)
    outcome, computed = run_sharded([copy.deepcopy(model) for _ in range(world)], tok, records, **kwargs)
    for out, failure in outcome:
        assert failure is None and as_bytes(out) == as_bytes(expected)
    assert all(0 < n < len(records) for n in computed), computed  # each rank computed a share only
    assert sum(computed) == len(records)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_sharded_scorer_other_architectures(arch) -> None:
    """Llama: several prompts per cached forward (position ids); T5: the seq2seq batches."""
    from helpers.tiny_models import make_tiny_model

    from vhctl import AutoModelForSeq2SeqLMWithValueHead

    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead
    torch.manual_seed(0)
    model = cls.from_pretrained(make_tiny_model(arch), v_head_init_strategy="normal").eval()
    tok = tiny_tokenizer()
    records = records_of(mixed_lines(60, seed=5))
    kwargs = {"batch_size": 2, "window": 25, "per_token": True}
    expected, _ = single(model, tok, records, **kwargs)
    outcome, computed = run_sharded([copy.deepcopy(model) for _ in range(2)], tok, records, **kwargs)
    for out, failure in outcome:
        assert failure is None and as_bytes(out) == as_bytes(expected)
    assert all(0 < n < len(records) for n in computed), computed


def test_sharded_scorer_with_rewards_and_a_bad_line(tmp_path) -> None:
    """Value and reward passes may land on different ranks: keys still come in the single-process order."""
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base, seed=1)

    def build():  # a PEFT model cannot be deep-copied: build one per rank, with the same seed
        torch.manual_seed(0)
        return AutoModelForCausalLMWithValueHead.from_pretrained(
            str(base),
            peft_config=tiny_lora_config("gpt2"),
            reward_adapter=str(adapter),
            reward_adapter_name="rm",
        ).eval()

    model = build()
    tok = tiny_tokenizer()
    lines = mixed_lines(50, seed=7)
    lines.insert(44, '{"id": "bad", "txt": "typo"}')
    records_skip = records_of(lines, skip_bad=True)
    kwargs = {"batch_size": 3, "window": 16, "reward": True, "skip_bad": True}
    expected, _ = single(model, tok, records_skip, **kwargs)
    assert any("error" in r for r in expected)
    assert all(list(r)[-2:] == ["value", "reward"] for r in expected if "error" not in r)
    outcome, _ = run_sharded([build(), build()], tok, records_skip, **kwargs)
    for out, failure in outcome:
        assert failure is None and as_bytes(out) == as_bytes(expected)

    # Without skip_bad, every rank stops at the bad line after yielding the same results before it.
    good = records_of(lines[:44])
    stream = [line + "\n" for line in lines]
    expected, failure = single(model, tok, iter_records(stream), batch_size=3, window=16)
    assert failure is not None and "line 45" in failure and len(expected) == len(good)
    outcome, _ = run_sharded([build(), build()], tok, lambda: iter_records(stream), batch_size=3, window=16)
    for out, rank_failure in outcome:
        assert as_bytes(out) == as_bytes(expected) and rank_failure == failure


def test_sharded_first_use_check_is_taken_by_every_rank(monkeypatch) -> None:
    """Prompt sharing's first-use check fails on this model (a local window the scorer is blind to):
    the rank that does not own that prompt pack must still take the decision, or the ranks' plans of
    later windows would differ."""
    import vhctl.scoring.model_parts as scoring

    model = local_window_value_model()
    monkeypatch.setattr(scoring, "_sliding_window", lambda config: None)
    rng = random.Random(5)
    prompts = ["short", words(rng, 8, 10), words(rng, 9, 12), words(rng, 2, 4), words(rng, 10, 12)]
    lines = [
        json.dumps(
            {"id": i, "prompt": prompts[(i * 7) % 5 if i < 12 else i % 5], "response": " " + words(rng, 3, 6)}
        )
        for i in range(40)
    ]
    records = records_of(lines)
    tok = tiny_tokenizer()
    kwargs = {"batch_size": 4, "window": 12}
    expected, _ = single(model, tok, records, **kwargs)
    outcome, _ = run_sharded([copy.deepcopy(model) for _ in range(2)], tok, records, **kwargs)
    for out, failure in outcome:
        assert failure is None and as_bytes(out) == as_bytes(expected)


def test_shard_arguments_are_checked(ckpt) -> None:
    from vhctl.modeling import load_checkpoint

    model = load_checkpoint(str(ckpt))
    tok = tiny_tokenizer()
    with pytest.raises(UsageError, match="gather"):
        Scorer(model, tok, shard=(0, 2))
    with pytest.raises(UsageError, match="0 <= rank < world"):
        Scorer(model, tok, shard=(2, 2), gather=lambda obj: [obj])
    # A world of one is a plain scorer.
    assert Scorer(model, tok, shard=(0, 1)).score_texts(["a b c"]) == Scorer(model, tok).score_texts(
        ["a b c"]
    )


# ---------------------------------------------------------------------------- torchrun, 2 processes on CPU


def _torchrun_score(args: list[str], *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [*torchrun_command(), "--standalone", "--nproc-per-node", "2", "-m", "vhctl", "score", *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=torchrun_env(), timeout=240)


def _alone(args: list[str], *, stdin: bytes | None = None):
    """The single-process run, in this process (one torch thread, as each torchrun worker has)."""
    assert torch.get_num_threads() == 1
    return runner.invoke(app, ["score", *args], input=stdin)


needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, bytes]:
    lines = mixed_lines(100, seed=11)
    bad = [*lines[:80], '{"id": 80, "prompt": 3}', *lines[80:]]
    return {"good": ("\n".join(lines) + "\n").encode(), "bad": ("\n".join(bad) + "\n").encode()}


@needs_gloo
def test_torchrun_file_input_is_byte_identical(ckpt, inputs, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(inputs["good"])
    args = [str(ckpt), "--input", str(source), "-b", "2", "--per-token"]
    alone = _alone(args)
    assert alone.exit_code == 0, alone.output
    both = _torchrun_score(args)
    assert both.returncode == 0, both.stderr.decode()
    assert both.stdout == alone.stdout_bytes and len(alone.stdout_bytes.splitlines()) == 100
    summaries = [line for line in both.stderr.decode().splitlines() if line.startswith("scored ")]
    assert (
        len(summaries) == 1 and "scored 100 line(s)" in summaries[0] and "2 processes (cpu)" in summaries[0]
    )


@needs_gloo
def test_torchrun_stdin_is_read_by_rank_0_only(ckpt, inputs) -> None:
    args = [str(ckpt), "-b", "2"]
    alone = _alone(args, stdin=inputs["good"])
    both = _torchrun_score(args, stdin=inputs["good"])
    assert alone.exit_code == 0 and both.returncode == 0, both.stderr.decode()
    assert both.stdout == alone.stdout_bytes and len(both.stdout.splitlines()) == 100


@needs_gloo
def test_torchrun_bad_line_stops_every_rank_with_one_error(ckpt, inputs) -> None:
    args = [str(ckpt), "-b", "2"]
    alone = _alone(args, stdin=inputs["bad"])
    both = _torchrun_score(args, stdin=inputs["bad"])
    assert alone.exit_code == 1
    assert both.returncode != 0
    assert both.stdout == alone.stdout_bytes and len(both.stdout.splitlines()) == 80  # every line before it
    errors = [line for line in both.stderr.decode().splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: line 81: field 'prompt' must be a string, not a number"], both.stderr.decode()


@needs_gloo
@pytest.mark.slow
def test_accelerate_launch_is_byte_identical(ckpt, inputs, tmp_path) -> None:
    """accelerate's multi-process launch goes through torch.distributed.run: the same environment."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.is_file():
        pytest.skip("accelerate's launcher is not installed")
    source = tmp_path / "in.jsonl"
    source.write_bytes(inputs["good"])
    args = [str(ckpt), "--input", str(source), "-b", "2"]
    alone = _alone(args)
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vhctl", "score", *args]  # fmt: skip
    env = {**torchrun_env(), "HF_HOME": str(tmp_path / "hf")}  # no accelerate config file of the user's
    both = subprocess.run(command, capture_output=True, env=env, timeout=240)
    assert both.returncode == 0, both.stderr.decode()
    assert both.stdout == alone.stdout_bytes and "2 processes" in both.stderr.decode()


# ---------------------------------------------------------------------------- device maps


def test_device_map_auto_on_this_machine(ckpt) -> None:
    """``--device-map auto`` works here (all on the CPU without a GPU); values match --device."""
    lines = "\n".join(mixed_lines(12, seed=3)) + "\n"
    mapped = runner.invoke(app, ["score", str(ckpt), "--device-map", "auto"], input=lines)
    assert mapped.exit_code == 0, mapped.output
    plain = runner.invoke(app, ["score", str(ckpt)], input=lines)
    got = [json.loads(line)["value"] for line in mapped.stdout.splitlines()]
    want = [json.loads(line)["value"] for line in plain.stdout.splitlines()]
    if torch.cuda.is_available():
        assert got == pytest.approx(want, abs=1e-3)
    else:  # all on the CPU: the same computation, the same bits (measured: 0)
        assert got == want

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt), device_map="auto").eval()
    ids = torch.tensor([[5, 6, 7, 8]], device=model.v_head.summary.weight.device)
    reference = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).eval()
    with torch.no_grad():
        value = model(ids)[2].cpu()
        # On the CPU the mapped model is the same model: equal values (measured: 0). On a GPU it runs
        # other kernels than the CPU reference (not measured on this machine: the old bound stays).
        on_gpu = model.v_head.summary.weight.device.type == "cuda"
        torch.testing.assert_close(value, reference(ids.cpu())[2], atol=1e-2 if on_gpu else 0.0, rtol=0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device-map", "everywhere"], "invalid --device-map"),
        (["--device-map", "auto", "--device", "cpu"], "both place the model"),
    ],
)
def test_device_map_usage_errors(ckpt, args, needle) -> None:
    result = runner.invoke(app, ["score", str(ckpt), *args], input="x\n")
    assert result.exit_code == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_partial_offload_is_refused_with_one_line(ckpt, tmp_path) -> None:
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                  "transformer.h.1": "cpu", "transformer.h.2": "disk", "transformer.h.3": "disk",
                  "transformer.ln_f": "cpu", "lm_head": "cpu"}  # fmt: skip
    with pytest.raises(UsageError) as caught:
        AutoModelForCausalLMWithValueHead.from_pretrained(
            str(ckpt), device_map=device_map, offload_folder=str(tmp_path / "offload")
        )
    text = str(caught.value)
    assert "\n" not in text and "offloads 8 of 8 modules" in text and "transformer.wte -> cpu" in text
    assert "load on the CPU" in text


def test_head_goes_where_the_last_hidden_state_lands(ckpt) -> None:
    """Decided from the device map by name: the final norm's device, not the tied LM head's (GPU 0)."""
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt))
    pm = model.pretrained_model
    split = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0, "transformer.h.0": 0,
             "transformer.h.1": 0, "transformer.h.2": 1, "transformer.h.3": 1, "transformer.ln_f": 1,
             "lm_head": 0}  # fmt: skip
    pm.hf_device_map = split
    assert model._head_device() == torch.device("cuda:1")
    pm.hf_device_map = {"": "cpu"}
    assert model._head_device() == torch.device("cpu")
    pm.hf_device_map = {**split, "transformer.h.3": "cpu", "transformer.ln_f": "cpu"}
    with pytest.raises(
        UsageError, match=r"offloads 2 of 9 modules \(transformer.h.3 -> cpu, transformer.ln_f -> cpu\)"
    ):
        model._head_device()
    del pm.hf_device_map


def test_device_map_with_several_processes_per_node_is_refused() -> None:
    from types import SimpleNamespace

    from vhctl.scoring.session import rank_device

    group = SimpleNamespace(launch=Launch(rank=0, world=2, local_rank=0, local_world=2))
    options = SimpleNamespace(device="auto", device_map="auto")  # the fields rank_device reads
    with pytest.raises(UsageError, match="--nproc-per-node 1"):
        rank_device(options, group)
    alone = SimpleNamespace(launch=Launch(rank=1, world=2, local_rank=0, local_world=1))  # one per node
    assert rank_device(options, alone) == ("cuda:0" if torch.cuda.is_available() else "auto")
