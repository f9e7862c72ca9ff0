"""No performance figure typed by hand in README.md, docs/ or CHANGELOG.md (issue #26).

A figure there is either inside a block that ``benchmarks/report.py`` generates from the committed
result files (``<!-- report.py: NAME -->`` ... ``<!-- /report.py: NAME -->``; the byte-for-byte test
in test_results_report.py keeps those current), or one that benchmarks/RESULTS.md (itself rebuilt
from the result files) holds, or on the short list below of figures that are settings, sizes or
targets rather than measurements.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# a number with a unit of time, size, rate or ratio: 3.2x, 14 %, 2.9 s, 362 MiB, 741 tok/s
FIGURE = re.compile(
    r"(?<![\w.#])\d[\d,]*(?:\.\d+)?\s?(?:x|%|s|ms|MiB|GiB|MB|GB|tok/s|tokens/s|CPU-seconds)(?![\w/])"
)
BLOCK = re.compile(r"^<!-- report\.py: ([\w-]+) -->$.*?^<!-- /report\.py: \1 -->$", re.S | re.M)

# (page, figure): not a measurement. Each says what it is; a new entry needs the same.
NOT_MEASURED = {
    ("docs/development.md", "5 GB"): "the size of the CUDA torch wheel install, a download size",
    ("docs/scale.md", "30 s"): "a timeout setting (the barrier at the end of a data-parallel run)",
    ("docs/serving.md", "10 ms"): "a setting: how long an idle worker waits for the rest of a burst",
    ("docs/reliability.md", "10%"): "the tolerance score_rss.py checks (its --tolerance), a target",
    ("docs/tiny-model.md", "1.2 MB"): "the shipped tiny model's file size",
    ("docs/tiny-model.md", "1.26 MB"): "the shipped tiny model's file size",
    ("CHANGELOG.md", "1.2 MB"): "the shipped tiny model's file size",
    ("CHANGELOG.md", "3.1 GB"): "the benchmark model's file size (GPT-2-large shape, float32)",
    ("CHANGELOG.md", "10 s"): "the GPU benchmark's minimum run time, a setting",
    ("CHANGELOG.md", "64 MiB"): "the copy's step size, a setting",
    ("docs/performance.md", "1.1x"): "issue #26's target for wrap's slope",
    ("CHANGELOG.md", "1.1x"): "issue #26's target for wrap's slope",
    ("CHANGELOG.md", "0.5 s"): "issue #26's allowance for wrap's fixed part",
    ("docs/performance.md", "1.2x"): "issue #17's target for wrap against the floors",
    ("docs/performance.md", "0.5 s"): "issue #26's allowance for wrap's fixed part",
    ("README.md", "95 %"): "the confidence level of the pair accuracy's interval (#25), a setting",
    ("CHANGELOG.md", "95 %"): "the confidence level of the pair accuracy's interval (#25), a setting",
    ("docs/commands/score.md", "95 %"): "the confidence level of the pair accuracy's interval, a setting",
}


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def figures(text: str) -> list[str]:
    """The figures of ``text`` outside its generated blocks and code spans."""
    text = BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # console examples
    text = re.sub(r"`[^`\n]*`", "", text)  # commands and options: `--batch-size 16`, `1 x 64`
    return [m.group(0) for m in FIGURE.finditer(text)]


def test_the_pattern_finds_figures() -> None:
    found = figures(
        "went from 3.1x to 3.7x, 10-12% faster, 2.9 s, 8.1 CPU-seconds, 362 MiB, 1,812 tok/s and `3 s`\n"
        "<!-- report.py: x -->\n5.0x\n<!-- /report.py: x -->\n#17 1e-5 Python 3.10 GPT-2"
    )
    assert found == ["3.1x", "3.7x", "12%", "2.9 s", "8.1 CPU-seconds", "362 MiB", "1,812 tok/s"]


def test_no_performance_figure_is_typed_by_hand() -> None:
    held = RESULTS.read_text(encoding="utf-8")
    loose = []
    for page in pages():
        rel = page.relative_to(ROOT).as_posix()
        for figure in figures(page.read_text(encoding="utf-8")):
            if (rel, figure) in NOT_MEASURED or figure in held:
                continue
            loose.append(f"{rel}: {figure}")
    assert not loose, (
        "figures that no result file backs (generate them with benchmarks/report.py, or say in "
        "NOT_MEASURED why one is not a measurement): " + ", ".join(loose)
    )


def test_the_exemptions_are_still_there() -> None:
    """An exemption whose figure is gone would let a later one in unseen."""
    for page, figure in NOT_MEASURED:
        assert figure in figures((ROOT / page).read_text(encoding="utf-8")), (page, figure)


def test_performance_page_has_its_generated_blocks() -> None:
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    names = [m.group(1) for m in BLOCK.finditer(text)]
    assert {"headline", "profile", "wrap-scaling"} <= set(names)
