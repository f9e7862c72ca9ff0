"""``report.py``'s carried sections: the benchmarks run on their own (data parallel, serve, compile,
wrap at GPT-2-large size) reach RESULTS.md as their reports were written, with their target rows
read from those reports, never typed in."""

from __future__ import annotations

import importlib
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
    assert report.main(["--carried-only", "--out", str(out)]) == 0
    text = out.read_text()
    # what run.sh wrote stays; the old carried rows and sections are gone (no RESULTS-dp.md here)
    assert "| 1. mixed scoring: >= 2.5x TRL | 3.28x | **met** |" in text
    assert "section one stays as it is" in text
    for gone in ("| 7. ", "an old report", "an old serve row", "an older serve report"):
        assert gone not in text
    # the reports' own rows, numbered by their sections, inside the targets table
    table = text[text.index("| target |") : text.index("## 1–2.")]
    assert (
        "| 8. `vhctl serve`, GPT-2 124M: at least 3x the OpenRLHF-style baseline | 2.6x | **missed** |"
        in table
    )
    assert (
        "| 10. GPT-2-large (774M): `vhctl wrap` (single) <= 1.2x | 7.3 s / 4.5 s = 1.62x | **missed**: its CPU 10.9 s |"
        in table
    )
    assert "| 10. GPT-2-large (774M): `vhctl make-ref` peak RSS < 500 MiB | 363 MiB | **met** |" in table
    # each report quoted whole under its section, its title replaced by the section's
    assert text.index("## 8. ") < text.index("## 10. ")
    assert "> | `vhctl serve` | 13.71 |" in text and "> ### Why `link-sharded` missed" in text
    assert "> # `vhctl serve` benchmark" not in text
    assert "## 9. " not in text  # no RESULTS-compile.md in this folder: no section, no rows
    # running it again changes nothing
    again = out.read_text()
    assert report.main(["--carried-only", "--out", str(out)]) == 0
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
