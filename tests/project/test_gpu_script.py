"""``benchmarks/gpu.py`` and ``report.py``'s GPU section, through the script's ``--dry-run`` on the CPU.

The GPU run itself needs a CUDA machine (``benchmarks/gpu_check.sh``); these tests make sure that the
one short GPU session cannot fail on the script's own code paths, and that what it writes is honest:
the baseline is called TRL only when trl 1.12.0 was imported, the figures in the JSON are consistent
with each other, and RESULTS.md's GPU section is read from a results file, never typed in.
"""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCH))
    return importlib.import_module("gpu")


@pytest.fixture(scope="module")
def report(gpu):
    return importlib.import_module("report")


@pytest.fixture(scope="module")
def dry(gpu, tmp_path_factory):
    """One dry run of the 1B model's stand-in (the targets' model), both workloads, real trl."""
    out = tmp_path_factory.mktemp("gpu")
    rc = gpu.main(["--dry-run", "--models", "llama-1b", "--out", str(out)])
    res = json.loads((out / "gpu.json").read_text())
    return rc, res, (out / "gpu.md").read_text(), out


def test_dry_run_passes_its_checks_and_labels_trl_honestly(dry, gpu) -> None:
    import trl

    rc, res, md, _ = dry
    assert rc == 0, [c for c in res["checks"] if not c["ok"]]
    assert res["schema"] == gpu.SCHEMA and res["dry_run"] is True and res["status"] == "complete"
    assert trl.__version__ == "1.12.0"
    assert res["baseline"] == {
        "label": "TRL 1.12.0",
        "is_trl": True,
        "trl_version": "1.12.0",
        "source": res["baseline"]["source"],
    }
    assert res["machine"]["trl"] == "1.12.0"
    assert "trl.experimental.ppo" in res["baseline"]["source"]
    assert res["checks"] and all(c["ok"] for c in res["checks"])
    assert res["code_sha256"] == gpu.code_fingerprint() and len(res["code_sha256"]) == 64
    for key in ("gpu", "torch", "cuda", "transformers", "python", "device"):
        assert res["machine"][key]
    assert res["settings"]["baseline_batch"] == 16 and res["settings"]["batches"] == [2, 4]
    assert md.startswith("# GPU scoring benchmark (DRY RUN")
    assert "| TRL 1.12.0 b16 tok/s |" in md and "TRL-style" not in md


def test_dry_run_figures_are_consistent(dry, gpu) -> None:
    """Every derived figure follows from the measured ones and from the workload itself."""
    from bench_scoring import best_of_n_workload, mixed_workload

    _, res, _, _ = dry
    model = res["models"]["llama-1b"]
    cfg = model["config"]
    assert set(model["workloads"]) == {"mixed", "best_of_n"}
    for kind, w in model["workloads"].items():
        # the tokens of a pass, recounted from the generators (the Llama tokenizer adds a BOS)
        if kind == "mixed":
            seqs = mixed_workload("llama", cfg["vocab_size"], w["inputs"], seed=1234, high=48)
            assert w["tokens_per_pass"] == sum(len(s) + 1 for s in seqs)
        else:
            rows = best_of_n_workload("llama", cfg["vocab_size"], w["inputs"] // 8, 8, seed=4321)
            assert len(rows) == w["inputs"]
            assert w["tokens_per_pass"] == sum(len(p) + len(r) + 1 for p, r in rows)
        sides = w["sides"]
        assert set(sides) == {"baseline@16", f"baseline@{w['baseline_best_batch']}", "vhctl"}
        assert w["baseline_best_batch"] in (2, 4) and w["vhctl_batch"] in (2, 4)
        for side in sides.values():
            assert side["count_ok"] and side["passes"] >= 1 and side["seconds"] >= 0.05
            assert side["tok_s"] == pytest.approx(w["tokens_per_pass"] * side["passes"] / side["seconds"])
            assert side["mfu"] == pytest.approx(
                w["model_flops_per_pass"] * side["passes"] / side["seconds"] / (res["peak"]["tflops"] * 1e12)
            )
        assert w["speedup_vs_batch16"] == pytest.approx(
            sides["vhctl"]["tok_s"] / sides["baseline@16"]["tok_s"]
        )
        best = sides[f"baseline@{w['baseline_best_batch']}"]
        assert w["speedup_vs_best"] == pytest.approx(sides["vhctl"]["tok_s"] / best["tok_s"])
        noise = w["bf16_noise"]
        assert noise["baseline_bf16_err"] > 0  # bf16 really ran: the baseline moved off its fp32 values
        assert noise["noise_ratio"] == pytest.approx(noise["max_abs_diff"] / noise["baseline_bf16_err"])
        assert noise["ok"] == (noise["noise_ratio"] <= 2)
        assert w["flop_bound_vs_batch16"] > 1  # padding and the LM head are work vhctl skips
    # best-of-8 counts each prompt once: fewer model FLOPs per token than running every row whole
    b, m = model["workloads"]["best_of_n"], model["workloads"]["mixed"]
    assert b["model_flops_per_pass"] / b["tokens_per_pass"] < 2 * model["params_nonembedding"] * 1.5
    assert m["model_flops_per_pass"] > 2 * model["params_nonembedding"] * m["tokens_per_pass"]
    # every target of the issue is listed, none judged on a dry run
    assert len(res["targets"]) == 7
    assert all(
        t["verdict"] == "not judged: dry run (tiny models on the CPU)" and t["ok"] is None
        for t in res["targets"]
    )


def test_flops_count(gpu) -> None:
    # 2 tokens from scratch: 2 N per token, attention over 1 + 2 keys
    assert gpu.flops([(0, 2)], n_params=10, layers=1, d_attn=1) == 2 * 10 * 2 + 4 * 3
    # 1 token after 5: 6 keys
    assert gpu.flops([(5, 1)], n_params=10, layers=2, d_attn=3) == 2 * 10 + 4 * 2 * 3 * 6
    wl = gpu.make_workload("best_of_n", "gpt2", 500, 16, 48)
    segs = wl.segments()
    assert len(segs) == 2 + 16  # two prompts, each once, then each response after its prompt
    assert segs[0] == (0, len(wl.rows[0][0]))  # GPT-2's tokenizer adds no special token
    assert all(before == len(wl.rows[0][0]) for before, _ in segs[1:9])
    assert wl.padded_batches(16) == [(16, max(wl.lengths()))]


def _fake_trl(monkeypatch, version: str, cls: type | None = None) -> None:
    trl = types.ModuleType("trl")
    trl.__version__ = version
    trl.__file__ = str(ROOT / "fake_trl" / "__init__.py")
    monkeypatch.setitem(sys.modules, "trl", trl)
    if cls is not None:
        ppo = types.ModuleType("trl.experimental.ppo")
        ppo.AutoModelForCausalLMWithValueHead = cls
        monkeypatch.setitem(sys.modules, "trl.experimental", types.ModuleType("trl.experimental"))
        monkeypatch.setitem(sys.modules, "trl.experimental.ppo", ppo)


def test_other_trl_is_refused(gpu, monkeypatch, tmp_path, capsys) -> None:
    _fake_trl(monkeypatch, "0.0.1")
    with pytest.raises(gpu.BaselineRefused, match="trl 0.0.1 is installed, not 1.12.0"):
        gpu.load_baseline(allow_equivalent=False)
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    stand_in = gpu.load_baseline(allow_equivalent=True)
    assert (stand_in.label, stand_in.is_trl, stand_in.trl_version) == (gpu.NOT_TRL, False, "not TRL")
    assert gpu.honest(stand_in)


def test_class_from_outside_trl_is_refused(gpu, monkeypatch) -> None:
    class Impostor:
        pass

    _fake_trl(monkeypatch, "1.12.0", Impostor)
    with pytest.raises(gpu.BaselineRefused, match="is not part of the trl package"):
        gpu.load_baseline(allow_equivalent=False)


def test_trl_style_stand_in_is_never_called_trl(gpu, monkeypatch, tmp_path) -> None:
    _fake_trl(monkeypatch, "0.0.1")
    rc = gpu.main(
        [
            "--dry-run",
            "--allow-trl-equivalent",
            "--models",
            "gpt2",
            "--workloads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    res = json.loads((tmp_path / "gpu.json").read_text())
    md = (tmp_path / "gpu.md").read_text()
    assert rc == 0
    assert res["baseline"]["label"] == gpu.NOT_TRL and res["baseline"]["is_trl"] is False
    assert res["machine"]["trl"] == "not TRL"
    assert "TRL 1.12.0" not in md and "TRL-style forward (not TRL) b16 tok/s" in md
    # were it a real run, the targets would still not be judged against a stand-in
    real = copy.deepcopy(res)
    real["dry_run"] = False
    real["models"]["llama-1b"] = copy.deepcopy(res["models"]["gpt2"])
    verdicts = {t["verdict"] for t in gpu.targets(real)}  # mixed ran; best-of-8 did not
    assert verdicts == {f"not judged: the baseline is {gpu.NOT_TRL}", "not measured"}


def _results_md(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    path.write_text((BENCH / "RESULTS.md").read_text())
    return path


def test_report_without_results_says_so(report, tmp_path) -> None:
    path = _results_md(tmp_path)
    assert (
        report.main(
            [
                "--gpu-only",
                "--out",
                str(path),
                "--gpu-json",
                str(tmp_path / "none.json"),
                "--gpu-check-json",
                str(tmp_path / "none-check.json"),
            ]
        )
        == 0
    )
    text = path.read_text()
    section = text[text.index("## 6. GPU") : text.index("## 7.")]
    assert "No GPU run of the current code exists" in section and "gpu_check.sh" in section
    assert "not against TRL" in section  # the history line
    assert "2.60x" not in text and "2.40x" not in text  # no hand-typed figures
    assert (
        "| 6. GPU, 1B model vs TRL 1.12.0" in text
        and "| no GPU run of the current code | not measured |" in text
    )
    assert "## 4." in text and "## 7." in text  # the other sections stay


def test_report_reads_the_results_file(report, gpu, dry, tmp_path) -> None:
    _, res, _, out = dry
    path = _results_md(tmp_path)
    # the dry run's file: said to be a dry run, not presented as results
    report.main(
        [
            "--gpu-only",
            "--out",
            str(path),
            "--gpu-json",
            str(out / "gpu.json"),
            "--gpu-check-json",
            str(tmp_path / "none.json"),
        ]
    )
    text = path.read_text()
    assert "is a dry run (tiny models on the CPU), not GPU results" in text
    assert "| no GPU run of the current code | not measured |" in text
    # a GPU run of the current code (the dry run's figures relabelled, in a scratch file only)
    run = copy.deepcopy(res)
    run["dry_run"] = False
    run["targets"] = gpu.targets(run)
    real = tmp_path / "gpu.json"
    real.write_text(json.dumps(run))
    check = {
        "command": "bash benchmarks/gpu_check.sh",
        "created": "now",
        "commit": "abc",
        "dry_run": False,
        "machine": {"gpu": "NVIDIA H200"},
        "steps": [{"name": "pytest-gpu", "status": "pass", "seconds": 12.0, "detail": "5 ran"}],
    }
    (tmp_path / "check.json").write_text(json.dumps(check))
    report.main(
        [
            "--gpu-only",
            "--out",
            str(path),
            "--gpu-json",
            str(real),
            "--gpu-check-json",
            str(tmp_path / "check.json"),
        ]
    )
    text = path.read_text()
    section = text[text.index("## 6. GPU") : text.index("## 7.")]
    assert "No GPU run" not in section and "has changed since" not in section
    w = run["models"]["llama-1b"]["workloads"]["mixed"]
    assert f"{w['speedup_vs_batch16']:.2f}x" in section  # the figures come from the file
    assert "| pytest-gpu | pass | 12 | 5 ran |" in section
    rows = [ln for ln in text.splitlines() if ln.startswith("| 6. ")]
    assert len(rows) == 7 and all(("**met**" in r) != ("**missed**" in r) for r in rows)
    # the same file after vhctl's code changed: stale, and said so
    run["code_sha256"] = "0" * 64
    real.write_text(json.dumps(run))
    report.main(
        [
            "--gpu-only",
            "--out",
            str(path),
            "--gpu-json",
            str(real),
            "--gpu-check-json",
            str(tmp_path / "check.json"),
        ]
    )
    text = path.read_text()
    assert "vhctl's code has changed since" in text and "no GPU run of the current code exists" in text
    assert all("(older code)" in ln for ln in text.splitlines() if ln.startswith("| 6. "))


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_shell_scripts_parse(script) -> None:
    result = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_script_documents_one_device_call() -> None:
    head = (BENCH / "gpu_check.sh").read_text().split("set -uo pipefail")[0]
    command = next(ln for ln in head.splitlines() if "command:" in ln).split("command:", 1)[1].strip()
    assert 'carry:     [".whl"]' in head and 0 < len(command) < 2000
