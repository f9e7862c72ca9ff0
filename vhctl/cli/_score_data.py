"""``vhctl score``'s table options (Parquet, datasets, pairs' summary, Ray) and their rendering.

The work is :mod:`vhctl.scoring.tables` (one process) and :mod:`vhctl.scoring.ray_data` (a Ray
cluster); this module parses the options, calls one of them and writes what comes back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from vhctl.cli._output import message, progress_enabled
from vhctl.cli._results import report_summary, write_results
from vhctl.errors import UsageError

__all__ = [
    "ColumnOpt",
    "DataArgs",
    "DatasetConfigOpt",
    "DatasetOpt",
    "DatasetRevisionOpt",
    "EngineOpt",
    "GpusPerActorOpt",
    "OutputOpt",
    "RayActorsOpt",
    "RayAddressOpt",
    "SplitOpt",
    "SummaryOpt",
    "report_pairs",
    "score_data",
]

OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Write Parquet to FILE (.parquet): the input's columns plus value (reward, values, truncated; pairs: chosen_*, "
        "rejected_*, margin), replacing FILE only once every row is in.",
    ),
]  # fmt: skip
SummaryOpt = Annotated[
    str | None,
    typer.Option(
        "--summary", metavar="FILE", show_default=False,
        help="Also write the summary as JSON (counts; for preference pairs the accuracy, its 95% Wilson "
        "interval and per-subset figures).",
    ),
]  # fmt: skip
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", metavar="NAME", show_default=False,
        help="Score a Hugging Face dataset (hub id through the datasets cache, or a dataset folder).",
    ),
]  # fmt: skip
SplitOpt = Annotated[
    str | None,
    typer.Option("--split", metavar="SPLIT", show_default=False, help="The dataset's split (train)."),
]
DatasetConfigOpt = Annotated[
    str | None,
    typer.Option("--dataset-config", metavar="NAME", show_default=False, help="The dataset's configuration."),
]
DatasetRevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset-revision", metavar="REV", show_default=False, help="The dataset's branch, tag or commit."
    ),
]
ColumnOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--column", metavar="FIELD=NAME", show_default=False,
        help="Read FIELD (text, prompt, response, messages, chosen, rejected, id, subset) from column NAME "
        "of a table; repeatable.",
    ),
]  # fmt: skip
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine", metavar="local|ray",
        help="ray: score a table with Ray Data over a Ray cluster (pip install 'vhctl[ray]').",
    ),
]  # fmt: skip
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", metavar="ADDR", show_default=False,
        help="The Ray cluster to join (default: RAY_ADDRESS, else a local one).",
    ),
]  # fmt: skip
RayActorsOpt = Annotated[
    int, typer.Option("--actors", min=1, metavar="N", help="--engine ray: scoring actors (one model each).")
]
GpusPerActorOpt = Annotated[
    float, typer.Option("--gpus-per-actor", min=0.0, metavar="G", help="--engine ray: GPUs per actor.")
]


@dataclass
class DataArgs:
    """The table options of one ``vhctl score`` call."""

    output: str | None = None
    summary: str | None = None
    dataset: str | None = None
    split: str | None = None
    dataset_config: str | None = None
    dataset_revision: str | None = None
    columns: list[str] = field(default_factory=list)
    engine: str = "local"
    ray_address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0

    def wanted(self, input_: str) -> bool:
        """Whether the table path scores this input (else the JSON Lines stream does)."""
        from vhctl.io.tables import is_table_path

        if self.engine not in ("local", "ray"):
            raise UsageError(f"invalid --engine {self.engine!r}", hint="use local or ray")
        if self.dataset is None and any((self.split, self.dataset_config, self.dataset_revision)):
            raise UsageError("--split, --dataset-config and --dataset-revision go with --dataset NAME")
        if self.dataset is not None and input_ != "-":
            raise UsageError("--input and --dataset both name the data to score; give one")
        table = (
            bool(self.dataset or self.output or self.columns) or self.engine == "ray" or is_table_path(input_)
        )
        if table and self.engine == "local":
            if self.output is not None and not self.output.lower().endswith((".parquet", ".pq")):
                raise UsageError(
                    f"--output {self.output}: vhctl score writes Parquet",
                    hint="name it FILE.parquet (JSON Lines go to stdout)",
                )
            from vhctl.scoring import distributed

            if distributed.launch_from_env() is not None:
                raise UsageError(
                    "a table is scored by one process, not by torchrun ranks",
                    hint="run it without torchrun, or spread it over a cluster with --engine ray",
                )
        return table


def report_pairs(summary: Any, stats: Any, elapsed: float, path: str | None) -> None:
    """The pairs' accuracy lines on stderr; the JSON summary into ``path`` (atomically)."""
    pairs = summary.to_dict() if summary is not None and summary.total.pairs else None
    if pairs is not None:
        for line in summary.lines():
            message(line)
    if path is None:
        return
    from vhctl.io.files import write_text_atomic

    data = {"records": stats.records, "errors": stats.errors, "truncated": stats.truncated,
            "tokens": stats.tokens, "seconds": round(elapsed, 3), **(pairs or {"pairs": 0})}  # fmt: skip
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def score_data(options: Any, data: DataArgs, input_: str) -> None:
    """Score a table in this process (or on Ray), write JSON Lines or Parquet, report."""
    from vhctl.io.tables import parse_columns
    from vhctl.scoring.tables import TableInput, start_table_run, write_parquet

    table = TableInput(
        path=None if data.dataset else input_, dataset=data.dataset, split=data.split,
        config=data.dataset_config, revision=data.dataset_revision, columns=parse_columns(data.columns),
    )  # fmt: skip
    if data.engine == "ray":
        _score_ray(options, data, table)
        return
    started = time.perf_counter()
    run = start_table_run(options, table, progress=progress_enabled())
    if data.output is not None:
        rows = write_parquet(run, data.output, options)
        message(f"wrote {rows} row(s) to {data.output}")
    else:
        write_results(run.results())
    elapsed = max(time.perf_counter() - started, 1e-9)
    report_summary(run.session.scorer(), elapsed, run.session.device, run.session.dtype, None)
    report_pairs(run.summary, run.stats, elapsed, data.summary)


def _score_ray(options: Any, data: DataArgs, table: Any) -> None:
    from vhctl.scoring.ray_data import RaySettings, score_with_ray

    if data.output is None:
        raise UsageError("--engine ray writes Parquet: give --output FILE.parquet (or a folder or URI)")
    started = time.perf_counter()
    settings = RaySettings(address=data.ray_address, actors=data.actors, gpus_per_actor=data.gpus_per_actor)
    done = score_with_ray(options, table, data.output, settings)
    elapsed = max(time.perf_counter() - started, 1e-9)
    message(f"wrote {done.rows} row(s) to {data.output} with {data.actors} Ray actor(s) in {elapsed:.1f}s")
    report_pairs(done.summary, done.stats, elapsed, data.summary)
