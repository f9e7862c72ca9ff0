"""Scoring a table (Parquet, Arrow, JSON Lines, a Hugging Face dataset) batch by batch, in order.

The rows of each input batch become records (two per preference pair), the scorer streams their
results in order, and each batch comes back whole with one result per row, to be written as
Parquet (:class:`~vhctl.io.table_out.ParquetOutput`) or as JSON Lines. Memory holds the batches
whose rows are in the scorer's current window, whatever the table's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record
from vhctl.io.table_out import ParquetOutput, result_schema
from vhctl.io.tables import (
    Columns,
    TableSource,
    batch_records,
    open_dataset,
    open_table,
    resolve_columns,
    row_error,
)
from vhctl.scoring.device import resolve_device, resolve_dtype
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.pairs import PairScoring, PairSummary
from vhctl.scoring.pipeline import ScoreOptions, finish_result, load_scoring_model
from vhctl.scoring.scorer import WINDOW_PER_BATCH, Scorer

__all__ = [
    "ScoringModelRun",
    "TableInput",
    "TableRun",
    "open_scoring",
    "score_batches",
    "start_table_run",
    "write_parquet",
]

Score = Callable[[Iterable[Record]], Iterator[dict[str, Any]]]


@dataclass
class ScoringModelRun:
    """A loaded model ready to score records: ``score(records)`` yields finished results in order."""

    scorer: Scorer
    device: torch.device
    dtype: torch.dtype
    normalization: tuple[float, float] | None

    def score(self, records: Iterable[Record], expected: int | None = None) -> Iterator[dict[str, Any]]:
        for result in self.scorer.score(records, expected_records=expected):
            yield finish_result(result, self.normalization)


def open_scoring(options: ScoreOptions, *, progress: bool = False) -> ScoringModelRun:
    """Load ``options.ckpt`` to score in this process (one device, or a device map).

    The one place the table and Ray paths load a model: it becomes ``ScoringSession.open`` once
    the session lands. Results mark truncated records (``"truncated": true``).
    """
    device = resolve_device(options.device if options.device_map is None else "auto")
    dtype = resolve_dtype(options.dtype, device)
    loaded = load_scoring_model(options, device, dtype, progress=progress)
    scorer = Scorer(
        loaded.model, loaded.tokenizer, batch_size=options.batch_size, max_length=options.max_length,
        max_batch_tokens=options.max_batch_tokens, per_token=options.per_token,
        reward=options.reward is not None, prefix_sharing=options.prefix_sharing, skip_bad=options.skip_bad,
        compile=options.compile, mark_truncated=True,
    )  # fmt: skip
    if options.device_map is not None:
        device = scorer.input_device
    return ScoringModelRun(scorer, device, dtype, loaded.normalization)


@dataclass(frozen=True)
class TableInput:
    """Where a table comes from: ``path`` (a file or folder) or ``dataset`` (a hub id or dataset folder)."""

    path: str | None = None
    dataset: str | None = None
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def open(self) -> TableSource:
        if self.dataset is not None:
            return open_dataset(self.dataset, split=self.split, config=self.config, revision=self.revision)
        if self.path is None or self.path == "-":
            raise UsageError("a table is read from a file: give --input FILE or --dataset NAME")
        return open_table(self.path)


def score_batches(
    source: TableSource, columns: Columns, score: Score, *, batch_rows: int, skip_bad: bool,
    summary: PairSummary | None = None,
) -> Iterator[tuple[Any, list[dict[str, Any]]]]:  # fmt: skip
    """Each input batch with its rows' results (one per row, pairs merged), in order.

    Raises:
        InputError: a bad row or corrupt data, naming the row (unless ``skip_bad`` for a bad row).
    """
    batches: deque[Any] = deque()
    pairing = PairScoring(summary)

    def records() -> Iterator[Record]:
        row = 1
        for batch in source.iter_batches(batch_rows):
            found = batch_records(batch, columns, row, skip_bad=skip_bad)
            batches.append(batch)
            row += batch.num_rows
            yield from found

    done: list[dict[str, Any]] = []
    try:
        for result in pairing.merge(score(pairing.expand(records()))):
            done.append(result)
            while batches and len(done) >= batches[0].num_rows:
                batch = batches.popleft()
                yield batch, done[: batch.num_rows]
                done = done[batch.num_rows :]
    except InputError as exc:
        raise InputError(row_error(exc, columns), line=exc.line, hint=exc.hint) from None
    while batches:  # empty batches at the end
        yield batches.popleft(), []


@dataclass
class TableRun:
    """A table being scored: ``batches`` yields each input batch with its results."""

    model: ScoringModelRun
    source: TableSource
    columns: Columns
    batches: Iterator[tuple[Any, list[dict[str, Any]]]]
    summary: PairSummary | None

    @property
    def stats(self) -> ScoreStats:
        return self.model.scorer.stats

    def results(self) -> Iterator[dict[str, Any]]:
        """The results alone, one per row (for JSON Lines output)."""
        for _, results in self.batches:
            yield from results


def start_table_run(options: ScoreOptions, table: TableInput, *, progress: bool = False) -> TableRun:
    """Open the table (its columns checked first, before the model loads), then the model."""
    source = table.open()
    columns = resolve_columns(source.schema, table.columns, source.name)
    model = open_scoring(options, progress=progress)
    summary = PairSummary(by="reward" if options.reward is not None else "value") if columns.pairs else None
    rows = options.batch_size * WINDOW_PER_BATCH
    expected = source.num_rows * (2 if columns.pairs else 1) if source.num_rows is not None else None
    batches = score_batches(
        source, columns, lambda records: model.score(records, expected), batch_rows=rows,
        skip_bad=options.skip_bad, summary=summary,
    )  # fmt: skip
    return TableRun(model, source, columns, batches, summary)


def write_parquet(run: TableRun, dest: str, options: ScoreOptions) -> int:
    """Write the run's rows with their results to ``dest`` (atomically); the number of rows written."""
    added = result_schema(
        pairs=run.columns.pairs, reward=options.reward is not None, per_token=options.per_token,
        errors=options.skip_bad,
    )  # fmt: skip
    with ParquetOutput(dest, run.source.schema, added) as output:
        for batch, results in run.batches:
            output.write(batch, results)
        output.commit()
    return output.rows
