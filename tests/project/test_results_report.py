"""``report.py``'s carried sections: the benchmarks run on their own (data parallel, serve, compile,
wrap at GPT-2-large size) reach RESULTS.md as their reports were written, with their target rows
read from those reports, never typed in."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

SERVE = """# `vhctl serve` benchmark

Command: `python benchmarks/bench_serve.py --reps 3`

| system | wall s |
| --- | ---: |
| `vhctl serve` | 13.71 |

- Target: throughput at least 80 % of `vhctl score`: **119%**, met.
- Target: at least 3x the OpenRLHF-style baseline: **2.6x**, missed.
- Per repetition: 111% / 2.9x.
"""

WRAP = """# wrap and make-ref at GPT-2-large size (issue #17)

| command | wall s |
| --- | ---: |
| `cp -r` | 4.53 |

## Targets

| target | measured | | why |
| --- | --- | --- | --- |
| `vhctl wrap` (single) <= 1.2x | 7.3 s / 4.5 s = 1.62x | **missed** | its CPU 10.9 s |
| `vhctl make-ref` peak RSS < 500 MiB | 363 MiB | met | a note, kept in the section |

### Why `link-sharded` missed
"""

RESULTS = """# vhctl benchmarks

## Targets

| target | measured | verdict |
| --- | --- | --- |
| 1. mixed scoring: >= 2.5x TRL | 3.28x | **met** |
| 7. data-parallel scoring: old | 1.00x | recorded |
| 8. an old serve row | 1x | **missed** |

## 1–2. Scoring throughput (CPU, float32)

section one stays as it is

## 7. Data-parallel scoring (torchrun, CPU)

> an old report

## 8. `vhctl serve` under 16 clients (CPU)

> an older serve report
"""


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCH))
    return importlib.import_module("report")


def test_target_rows_are_read_from_the_reports(report) -> None:
    assert report.bullet_targets(SERVE.splitlines()) == [
        ["throughput at least 80 % of `vhctl score`", "119%", "**met**"],
        ["at least 3x the OpenRLHF-style baseline", "2.6x", "**missed**"],
    ]
    assert report.table_targets(WRAP.splitlines()) == [
        ["`vhctl wrap` (single) <= 1.2x", "7.3 s / 4.5 s = 1.62x", "**missed**: its CPU 10.9 s"],
        ["`vhctl make-ref` peak RSS < 500 MiB", "363 MiB", "**met**"],
    ]


def test_carried_only_replaces_sections_seven_and_later(report, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report.common, "BENCH", tmp_path)
    (tmp_path / "RESULTS-serve.md").write_text(SERVE)
    (tmp_path / "RESULTS-wrap-large.md").write_text(WRAP)
    out = tmp_path / "RESULTS.md"
    out.write_text(RESULTS)
    assert report.main(["--carried-only", "--out", str(out), "--results", str(tmp_path)]) == 0
    text = out.read_text()
    # what run.sh wrote stays; the old carried rows and sections are gone (no RESULTS-dp.md here)
    assert "| 1. mixed scoring: >= 2.5x TRL | 3.28x | **met** |" in text
    assert "section one stays as it is" in text
    for gone in ("| 7. ", "an old report", "an old serve row", "an older serve report"):
        assert gone not in text
    # the reports' own rows, numbered by their sections, inside the targets table
    table = text[text.index("| target |") : text.index("## 1–2.")]
    assert (
        "| 8. `vhctl serve`, GPT-2 124M: at least 3x the OpenRLHF-style baseline | 2.6x (no result file) | **missed** |"
        in table
    )
    assert (
        "| 10. GPT-2-large (774M): `vhctl wrap` (single) <= 1.2x | 7.3 s / 4.5 s = 1.62x (no result file) | **missed**: its CPU 10.9 s |"
        in table
    )
    assert (
        "| 10. GPT-2-large (774M): `vhctl make-ref` peak RSS < 500 MiB | 363 MiB (no result file) | **met** |"
        in table
    )
    # each report quoted whole under its section, its title replaced by the section's
    assert text.index("## 8. ") < text.index("## 10. ")
    assert "> | `vhctl serve` | 13.71 |" in text and "> ### Why `link-sharded` missed" in text
    assert "> # `vhctl serve` benchmark" not in text
    assert "## 9. " not in text  # no RESULTS-compile.md in this folder: no section, no rows
    # running it again changes nothing
    again = out.read_text()
    assert report.main(["--carried-only", "--out", str(out), "--results", str(tmp_path)]) == 0
    assert out.read_text() == again


def test_carried_only_needs_an_existing_file(report, tmp_path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        report.main(["--carried-only", "--out", str(tmp_path / "none.md")])


def _model(label: str, eager: float, compiled: float, *, trl: float | None = None) -> dict:
    stat = lambda v: {"median": v, "min": v, "max": v, "n": 1}  # noqa: E731
    out = {
        "label": label,
        "mixed": {
            "eager": {"of_matmul": stat(eager), "tok_s": stat(1000 * eager)},
            "compiled": {"of_matmul": stat(compiled), "tok_s": stat(1000 * compiled)},
        },
    }
    if trl is not None:
        out["best_of_8"] = {"eager_vs_trl": trl, "compiled_vs_trl": trl * compiled / eager}
    return out


def test_compile_targets_are_judged_from_the_figures(report) -> None:
    bench_compile = importlib.import_module("bench_compile")
    gpt2 = _model("GPT-2 124M", 0.76, 0.75, trl=5.24)
    gpt2["cache"] = {"ratio": 0.25, "first": {"compile_s": 40.0}, "second": {"compile_s": 10.0}}
    rows = bench_compile.targets({"models": {"gpt2": gpt2, "llama": _model("Llama", 0.90, 0.92, trl=3.70)}})
    verdicts = {target: (measured, verdict) for target, measured, verdict, _ in rows}
    assert verdicts["mixed, GPT-2 124M: compiled >= 90 % of the matmul rate"] == ("75 %", "**missed**")
    assert verdicts["mixed, Llama: compiled >= 90 % of the matmul rate"] == ("92 %", "met")
    assert verdicts["best-of-8, GPT-2 124M: compiled >= 5x TRL 1.12.0"][1] == "met"
    assert verdicts["best-of-8, Llama: compiled >= 5x TRL 1.12.0"] == ("3.78x", "**missed**")
    cache = verdicts["compile cache, GPT-2 124M: second start <= 20 % of the first's compile"]
    assert cache == ("25 % (10.0 s of 40.0 s)", "**missed**")
    # a miss says why with the run's own figures; a target met needs no reason
    why = {target: reason for target, _, _, reason in rows}
    assert "0.99x eager" in why["mixed, GPT-2 124M: compiled >= 90 % of the matmul rate"]
    assert "3.70x TRL" in why["best-of-8, Llama: compiled >= 5x TRL 1.12.0"]
    assert why["mixed, Llama: compiled >= 90 % of the matmul rate"] == ""


# ---------------------------------------------------------------------------------------------- issue #26


def _tracked_copy(dest: Path) -> None:
    """The files a fresh clone has (git's tracked files as they are now; without git, the tree less
    what .gitignore names), so nothing from a local run (``benchmarks/_work``) can leak in."""
    import shutil
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True
    )
    if listed.returncode == 0 and listed.stdout:
        files = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    else:
        skip = {".git", ".venv", "_work", ".venv-bench", "__pycache__", ".mypy_cache", ".ruff_cache"}
        files = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    for path in files:
        if path.is_file():
            target = dest / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def test_results_md_and_docs_blocks_rebuild_byte_for_byte_in_a_clean_copy(tmp_path) -> None:
    """RESULTS.md and the generated blocks of the docs are what the committed result files give:
    rebuilt in a copy of the tracked files only (no git history there, as in a shallow CI clone)."""
    import subprocess

    _tracked_copy(tmp_path)
    assert (tmp_path / "benchmarks" / "RESULTS.md").is_file()
    assert not (tmp_path / ".git").exists()
    check = subprocess.run(
        [sys.executable, "benchmarks/report.py", "--check"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # and --check can fail: one changed byte of a committed figure is caught
    results = tmp_path / "benchmarks" / "RESULTS.md"
    results.write_text(results.read_text().replace("| target |", "| target  |", 1))
    again = subprocess.run(
        [sys.executable, "benchmarks/report.py", "--check"], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 1 and "RESULTS.md: differs" in again.stdout


def test_every_committed_result_names_its_run(report) -> None:
    results = sorted((BENCH / "results").glob("*.json"))
    assert results, "no committed result"
    for path in results:
        res = json.loads(path.read_text())
        if path.name.startswith("gpu"):
            continue  # gpu.py's own schema (section 6)
        assert res["schema"] == report.common.SCHEMA, path
        assert res["name"] == path.stem
        assert res["command"].startswith("python benchmarks/"), path
        assert len(res["commit"]) == 40 and res["date"] and res["elapsed_s"] > 0
        assert {"cpu", "cores", "mem_gib", "threads"} <= set(res["machine"])
        assert {"python", "torch", "transformers", "vhctl"} <= set(res["versions"])
        assert len(res["load"]["before"]) == 3 and len(res["load"]["after"]) == 3
        assert res["measures"] and all(m.startswith("vhctl/") for m in res["measures"])
        assert len(res["code_fingerprint"]) == 64


def _raw_values(node: object) -> int:
    if isinstance(node, dict):
        return int("values" in node and isinstance(node["values"], list)) + sum(
            map(_raw_values, node.values())
        )
    if isinstance(node, list):
        return sum(map(_raw_values, node))
    return 0


def test_results_keep_the_raw_repetitions() -> None:
    for name in ("wrap", "memory", "startup", "scoring"):
        path = BENCH / "results" / f"{name}.json"
        if path.is_file():
            assert _raw_values(json.loads(path.read_text())["data"]) > 0, name
    scaling = BENCH / "results" / "wrap-scaling.json"
    if scaling.is_file():
        runs = json.loads(scaling.read_text())["data"]["runs"]
        assert all(len(r) >= 2 and all("wall_s" in x for x in r) for r in runs.values())


def test_code_status_from_the_files_alone(report, tmp_path) -> None:
    common = report.common
    (tmp_path / "vhctl" / "pkg").mkdir(parents=True)
    (tmp_path / "vhctl" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "vhctl" / "b.py").write_text("y = 2\n")
    (tmp_path / "vhctl" / "pkg" / "__pycache__").mkdir()
    paths = ["vhctl/pkg"]
    res = {
        "measures": paths,
        "code_fingerprint": common.code_fingerprint(paths, tmp_path),
        "commit": "c" * 40,
    }
    assert common.code_status(res, tmp_path)[0] == "current"
    (tmp_path / "vhctl" / "b.py").write_text("y = 3\n")  # not measured
    (tmp_path / "vhctl" / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")  # a cache
    assert common.code_status(res, tmp_path)[0] == "current"
    (tmp_path / "vhctl" / "pkg" / "a.py").write_text("x = 2\n")
    status, said = common.code_status(res, tmp_path)
    assert status == "stale" and "**stale**" in said and "cccccccccccc" in said
    (tmp_path / "vhctl" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "vhctl" / "pkg" / "new.py").write_text("")  # a file added
    assert common.code_status(res, tmp_path)[0] == "stale"
    assert common.code_status({"commit": "c" * 40}, tmp_path)[0] == "unknown"


def test_a_stale_result_is_marked_in_its_section_and_rows(report, tmp_path) -> None:
    committed = sorted(p for p in (BENCH / "results").glob("*.json") if p.stem in dict(report.SECTIONS))
    assert committed
    res = json.loads(committed[0].read_text())
    res["code_fingerprint"] = "0" * 64  # as if the code had changed since
    (tmp_path / committed[0].name).write_text(json.dumps(res))
    text = report.build(tmp_path)
    assert "**stale**: the code it measures has changed since it ran at commit" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "(older code)" in ln]
    assert rows


def _scaling_runs(walls: dict[str, tuple[float, float]], reps: int = 3) -> dict[str, list[dict[str, float]]]:
    """Runs of every command of bench_wrap_scaling at two sizes (124M, 774M), one layout's walls given."""
    runs: dict[str, list[dict[str, float]]] = {
        "import": [{"wall_s": 3.0, "cpu_s": 3.0}] * reps,
        "python": [{"wall_s": 0.02, "cpu_s": 0.02}] * reps,
    }
    for layout in ("single", "sharded"):
        for kind, (small, large) in walls.items():
            runs[f"{kind}-124M-{layout}"] = [{"wall_s": small, "cpu_s": small}] * reps
            runs[f"{kind}-774M-{layout}"] = [{"wall_s": large, "cpu_s": large}] * reps
    return runs


def test_wrap_scaling_fits_and_judges(report) -> None:
    scaling = importlib.import_module("bench_wrap_scaling")
    report_docs = importlib.import_module("report_docs")
    gb = {"124M": {"single": 0.5, "sharded": 0.5}, "774M": {"single": 3.0, "sharded": 3.0}}
    # copy 1.0 s/GB from 0.5 s, hash 1.5 s/GB from 0, wrap 1.6 s/GB from 3.2 s: slope 1.07x, fixed within
    # import + 0.5, but at 3 GB 8.0 / 4.5 = 1.78x -- the fixed part is what keeps it above 1.2x
    walls = {"copy": (1.0, 3.5), "hash": (0.75, 4.5), "wrap": (4.0, 8.0)}
    fit = scaling.analyse(_scaling_runs(walls), gb, ["124M", "774M"])
    single = fit["layouts"]["single"]
    assert single["fits"]["wrap"]["slope_s_per_gb"] == pytest.approx(1.6)
    assert single["fits"]["wrap"]["fixed_s"] == pytest.approx(3.2)
    assert single["fits"]["copy"]["fixed_s"] == pytest.approx(0.5)
    assert single["slope_ratio"] == pytest.approx(1.6 / 1.5)
    assert single["large_ratio"] == pytest.approx(8.0 / 4.5)
    assert single["large_ratio_without_fixed"] == pytest.approx(4.8 / 4.5)
    data = {
        "sizes": ["124M", "774M"],
        "gb": gb,
        "runs": _scaling_runs(walls),
        "fit": fit,
        "reps": 3,
        "shards": 5,
    }
    rows: list[list[str]] = []
    report_docs.section_wrap_scaling(data, rows, [])
    verdicts = {t: (m, v) for t, m, v in rows}
    slope = verdicts["11. wrap's marginal cost (single): slope <= 1.1x max(copy, hash) per GB"]
    assert slope == ("1.60 s/GB vs 1.50 s/GB = 1.07x", "**met**")
    assert (
        verdicts["11. wrap's fixed part (single) <= the import of torch + transformers + 0.5 s"][1]
        == "**met**"
    )
    big = verdicts["11. wrap at 774M (single, 3.0 GB) <= 1.2x max(copy, hash)"]
    assert big[0] == "1.78x" and "the fixed part (3.20 s) is what keeps it above 1.2x" in big[1]
    # a steeper wrap: the slope misses, and the fixed part no longer explains the 3 GB ratio
    walls["wrap"] = (2.0, 8.0)  # 2.4 s/GB from 0.8 s
    fit = scaling.analyse(_scaling_runs(walls), gb, ["124M", "774M"])
    rows = []
    report_docs.section_wrap_scaling({**data, "runs": _scaling_runs(walls), "fit": fit}, rows, [])
    verdicts = {t: (m, v) for t, m, v in rows}
    assert verdicts["11. wrap's marginal cost (single): slope <= 1.1x max(copy, hash) per GB"][1].startswith(
        "**missed**"
    )
    assert (
        "not only the fixed part" in verdicts["11. wrap at 774M (single, 3.0 GB) <= 1.2x max(copy, hash)"][1]
    )


def test_profile_categories() -> None:
    sys.path.insert(0, str(BENCH))
    profile = importlib.import_module("profile_scoring")
    assert profile.category("aten::addmm") == profile.category("aten::mm") == "matmul"
    assert profile.category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile.category("aten::scaled_dot_product_attention") == "attention"
    assert profile.category("aten::gelu") == profile.category("aten::native_layer_norm") == "other"
