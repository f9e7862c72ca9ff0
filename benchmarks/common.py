"""Shared pieces of the benchmarks: models from configs, word-level tokenizers, timing and memory helpers.

Nothing here downloads anything: the models are built from ``transformers`` configs with random weights
(seeded), and each model gets a word-level tokenizer whose tokens are the words ``w0 w1 ...``, so a text of
n words is exactly n tokens (plus the tokenizer's special tokens) and token lengths are under our control.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
WORK = BENCH / "_work"  # scratch: models, outputs, smoke runs (gitignored)
# Committed results, one JSON file per benchmark (``record``); BENCH_RESULTS_DIR points a smoke run elsewhere.
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR") or BENCH / "results").resolve()
SCHEMA = "vhctl-bench-result/1"

# The vhctl code each benchmark's figures depend on (what its measured commands execute, imports
# included, traced with sys.setprofile over `vhctl score`, `wrap`, `make-ref` and `--help`). A result
# records these paths and their fingerprint; report.py marks its section stale when they change.
_TOP = ["vhctl/__init__.py", "vhctl/_version.py", "vhctl/constants.py", "vhctl/dtypes.py", "vhctl/errors.py"]
_LOAD = ["vhctl/_tiny", "vhctl/checkpoint", "vhctl/formats", "vhctl/hub", "vhctl/io", "vhctl/modeling"]
CODE = {
    "scoring": [*_TOP, *_LOAD, "vhctl/scoring"],
    "make-ref": [*_TOP, *_LOAD, "vhctl/ops", "vhctl/cli"],
    "wrap": [*_TOP, "vhctl/_tiny", "vhctl/checkpoint", "vhctl/formats", "vhctl/io", "vhctl/ops", "vhctl/cli"],
    "startup": [*_TOP, *_LOAD, "vhctl/scoring", "vhctl/cli"],
}

MODELS = ("gpt2", "llama")
MODEL_LABEL = {"gpt2": "GPT-2 124M", "llama": "Llama-style 110M"}
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def set_threads(n: int = THREADS) -> None:
    """Pin torch (and BLAS) to ``n`` threads; the machine is shared, so more threads only add noise."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def thread_env(n: int = THREADS) -> dict[str, str]:
    """Environment for child processes with the same thread limits."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(n)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["PYTHONWARNINGS"] = "ignore"
    return env


# ---------------------------------------------------------------------------------------------- models


def model_config(name: str) -> Any:
    """The benchmark models: GPT-2 124M (``GPT2Config()`` defaults) and a Llama-style 110M."""
    if name == "gpt2":
        from transformers import GPT2Config

        return GPT2Config()
    if name == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            intermediate_size=2048,
            vocab_size=32000,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    if name == "gpt2-small-test":  # a few-MB model for --self-test runs of the harness
        from transformers import GPT2Config

        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512)
    raise ValueError(f"unknown benchmark model {name!r}")


def special_tokens(name: str) -> dict[str, Any]:
    """Special tokens of each model's tokenizer: GPT-2 adds none; the Llama-style one puts a BOS in front."""
    if name == "llama":
        return {
            "unk": "<unk>",
            "bos": "<s>",
            "eos": "</s>",
            "pad": "<unk>",
            "prefix": ["<s>"],
            "first_word": 3,
        }
    return {
        "unk": "<|endoftext|>",
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "prefix": [],
        "first_word": 1,
    }


def build_tokenizer(name: str, vocab_size: int) -> Any:
    """A word-level fast tokenizer over the words ``w{id}``, with the model's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    spec = special_tokens(name)
    specials = list(dict.fromkeys([spec["unk"], spec["bos"], spec["eos"]]))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token=spec["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if spec["prefix"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=spec["unk"],
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        padding_side="right",
    )


def build_model_dir(name: str, out: Path, *, seed: int = 0) -> Path:
    """Build a model from its config with random weights (seeded) and save it with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    build_tokenizer(name, config.vocab_size).save_pretrained(str(out))
    return out


def words(ids: Sequence[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def param_count_and_bytes(folder: Path) -> tuple[int, int]:
    """Parameters and bytes of a safetensors model folder, from the file header alone."""
    from safetensors import safe_open

    total = nbytes = 0
    for path in sorted(folder.glob("*.safetensors")):
        if path.name.startswith("value_head"):
            continue
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                sl = handle.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                total += n
                nbytes += n * {"F32": 4, "BF16": 2, "F16": 2}.get(sl.get_dtype(), 4)
    return total, nbytes


# ---------------------------------------------------------------------------------------------- stats


def median_range(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of the repetitions, with the repetitions themselves (``values``)."""
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def fmt_mr(stat: dict[str, float] | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    """``median (min–max)``."""
    if not stat:
        return "n/a"
    med = fmt.format(stat["median"])
    if stat.get("n", 1) <= 1:
        return f"{med}{unit}"
    return f"{med}{unit} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


# ---------------------------------------------------------------------------------------------- memory


def rss_now_kib() -> int:
    """Current resident set size (VmRSS) in KiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_peak_kib() -> int:
    """Peak resident set size of this process (VmHWM) in KiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_timed(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run a whole process under ``/usr/bin/time -v``: wall seconds and peak RSS (MiB), output kept."""
    time_bin = "/usr/bin/time"
    full = [time_bin, "-v", *cmd] if os.path.exists(time_bin) else list(cmd)
    start = time.perf_counter()
    proc = subprocess.run(full, input=stdin, capture_output=True, env=env, cwd=cwd, timeout=timeout)
    wall = time.perf_counter() - start
    stderr = proc.stderr.decode("utf-8", "replace")
    peak_kib = None
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            peak_kib = int(line.rsplit(":", 1)[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "peak_mib": (peak_kib or 0) / 1024, "stdout": proc.stdout, "stderr": stderr}


# ---------------------------------------------------------------------------------------------- results


def save_result(section: str, data: dict[str, Any]) -> Path:
    """Scratch JSON under ``_work/`` (intermediate state; committed results go through ``record``)."""
    folder = WORK / "state"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{section}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_result(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """A committed result (``record``'s file ``NAME.json``), or None when there is none."""
    path = (folder or RESULTS_DIR) / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _git(*args: str) -> str | None:
    """``git ARGS`` in the repository, its stdout stripped; None when git or the repository is missing."""
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_files(paths: Sequence[str], root: Path = ROOT) -> list[Path]:
    """The files under ``paths`` (repository-relative files or folders), sorted; caches left out."""
    found: set[Path] = set()
    for rel in paths:
        path = root / rel
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
            )
    return sorted(found)


def code_fingerprint(paths: Sequence[str], root: Path = ROOT) -> str:
    """sha256 over the names and contents of the files a benchmark measures.

    The report compares it with the checkout's own, so it knows whether a result is stale without
    any git history (CI clones shallow); a path that is gone changes it too.
    """
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(f"path {rel}\n".encode())
    for path in code_files(paths, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


class Recorder:
    """One benchmark run's result file: what ran, where, on which code, and the raw repetitions.

    Create it before measuring (it takes the load average and the code's fingerprint then), and call
    ``write(data)`` at the end. ``measures`` lists the ``vhctl/`` paths whose code the figures
    depend on; ``report.py`` marks the section stale once they differ from the checkout's.
    """

    def __init__(self, name: str, measures: Sequence[str], argv: Sequence[str] | None = None) -> None:
        self.name = name
        self.measures = list(measures)
        args = list(sys.argv[1:] if argv is None else argv)
        script = Path(sys.argv[0]).resolve()
        try:
            shown = script.relative_to(ROOT).as_posix()
        except ValueError:
            shown = script.name
        self.command = " ".join(["python", shown, *args])
        self.start = time.time()
        self.load_before = [round(x, 2) for x in os.getloadavg()]
        self.fingerprint = code_fingerprint(self.measures)
        dirty = _git("status", "--porcelain", "--", *self.measures)
        self.commit = _git("rev-parse", "HEAD") or "unknown"
        self.dirty = bool(dirty) if dirty is not None else None

    def write(self, data: dict[str, Any], folder: Path | None = None) -> Path:
        """``RESULTS_DIR/NAME.json``: the run's metadata and ``data``."""
        if code_fingerprint(self.measures) != self.fingerprint:
            raise SystemExit(f"{self.name}: the code it measures changed during the run; not recorded")
        info = machine_info()
        result = {
            "schema": SCHEMA,
            "name": self.name,
            "command": self.command,
            "commit": self.commit,
            "measured_code_dirty": self.dirty,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.start)),
            "elapsed_s": round(time.time() - self.start, 1),
            "machine": {k: info[k] for k in ("cpu", "isa", "cores", "mem_gib", "threads", "platform")},
            "versions": {k: info[k] for k in ("python", "torch", "transformers", "trl", "vhctl")},
            "load": {"before": self.load_before, "after": [round(x, 2) for x in os.getloadavg()]},
            "measures": self.measures,
            "code_fingerprint": self.fingerprint,
            "data": data,
        }
        out = folder or RESULTS_DIR
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"  result: {path}", flush=True)
        return path


def code_status(result: dict[str, Any], root: Path = ROOT) -> tuple[str, str]:
    """(``current`` | ``stale`` | ``unknown``, a sentence) for a result's code against the checkout's.

    Compares the fingerprint recorded with the result with that of the same paths now: it needs
    the files only, not git's history, so a shallow clone gets the same answer as a full one.
    """
    recorded, paths = result.get("code_fingerprint"), result.get("measures")
    commit = str(result.get("commit", "unknown"))[:12]
    if not recorded or not paths:
        return "unknown", "whether its code is current is unknown (the result records no code fingerprint)"
    dirty = " (with uncommitted changes to it)" if result.get("measured_code_dirty") else ""
    if code_fingerprint(paths, root) == recorded:
        return "current", f"the code it measures is unchanged since it ran at commit {commit}{dirty}"
    return "stale", (
        f"**stale**: the code it measures has changed since it ran at commit {commit}{dirty}; "
        f"rerun `{result.get('command', '?')}`"
    )


def provenance(result: dict[str, Any]) -> str:
    """One paragraph: where a result's figures come from, and whether its code is still current."""
    m, v, load = result["machine"], result["versions"], result["load"]
    paths = ", ".join(f"`{p}`" for p in result["measures"])
    return (
        f"Result `benchmarks/results/{result['name']}.json`: `{result['command']}` on {result['date']} "
        f"({result['elapsed_s'] / 60:.1f} min), commit {result['commit'][:12]}; {m['cpu']}, {m['cores']} cores, "
        f"{m['mem_gib']} GiB, {m['threads']} threads; Python {v['python']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, TRL {v['trl']}, vhctl {v['vhctl']}; "
        f"{load_note(load['before'][0], load['after'][0])}. Code measured: {paths}; "
        f"{code_status(result)[1]}."
    )


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        flag_line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flag_line]
        flags = ", ".join(isa)
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    import vhctl

    return {
        "cpu": cpu,
        "isa": flags,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "threads": THREADS,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "vhctl": getattr(vhctl, "__version__", "?"),
        "loadavg": os.getloadavg(),
        "platform": platform.platform(),
    }


def load_note(start: float, end: float) -> str:
    """The load averages of a run and what they mean: quiet when no other work held half the cores
    as it started (a benchmark's own processes raise the load it ends with)."""
    cores = os.cpu_count() or 1
    said = f"load average {start:.1f} at the start, {end:.1f} at the end"
    if start < cores / 2:
        return f"{said} (a quiet machine: nothing else held a core as it started; the load is its own)"
    return f"{said} (other work was running: figures of a loaded machine; ratios are taken within one run)"


def interleave(reps: int, tasks: Sequence[tuple[str, Callable[[], float]]]) -> dict[str, list[float]]:
    """Run each task once per repetition, alternating their order each time; collect their results."""
    out: dict[str, list[float]] = {name: [] for name, _ in tasks}
    for rep in range(reps):
        order = list(tasks) if rep % 2 == 0 else list(reversed(tasks))
        for name, task in order:
            out[name].append(task())
    return out
