"""Scoring a dataset on a Ray cluster with Ray Data: a callable class for ``Dataset.map_batches``.

Each Ray actor holds one loaded model (:class:`ValueScorer`); Ray Data reads the input (local
files, object storage, a Hugging Face dataset), spreads its blocks over the actors and writes the
output. Rows are scored exactly as ``vhctl score`` scores them (pairs too), and the output columns
are the ones of ``vhctl score --output``. Needs the ``vhctl[ray]`` extra.

    import ray
    from vhctl.scoring.ray_data import ValueScorer
    from vhctl.scoring.options import ScoreOptions

    ds = ray.data.read_parquet("s3://bucket/samples/")
    ds = ds.map_batches(ValueScorer, fn_constructor_kwargs={"options": ScoreOptions(ckpt="critic")},
                        batch_format="pyarrow", batch_size=512, concurrency=8, num_gpus=1)
    ds.write_parquet("s3://bucket/scored/")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhctl.errors import UsageError, VhctlError
from vhctl.io.table_out import ParquetOutput, output_schema, result_schema, with_results
from vhctl.io.tables import Columns, batch_records, need_data_extra, resolve_columns
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.options import ScoreOptions
from vhctl.scoring.pairs import PairScoring, PairSummary
from vhctl.scoring.tables import TableInput, open_scoring

__all__ = ["RayDone", "RaySettings", "ValueScorer", "need_ray", "score_with_ray"]


def need_ray() -> Any:
    """The ``ray`` module with Ray Data, or the one-line error saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray Data", hint="pip install 'vhctl[ray]'") from exc
    return ray


class ValueScorer:
    """Scores Arrow batches: for ``ray.data.Dataset.map_batches(ValueScorer, batch_format="pyarrow")``.

    One instance per Ray actor loads the model once and scores every batch given to it. A batch
    comes back with the result columns of ``vhctl score --output`` added.

    Args:
        options: How to load and score (the checkpoint, batch size, prefix sharing, reward...).
        columns: ``--column`` choices, {field: column name}; the rest is found by name.
    """

    def __init__(self, options: ScoreOptions, columns: dict[str, str] | None = None) -> None:
        self.options = options
        self.columns = dict(columns or {})
        self._session = open_scoring(options)

    def __call__(self, batch: Any) -> Any:
        """The batch (a ``pyarrow.Table``) with its results' columns; rows in the same order."""
        pa = need_data_extra()
        columns = resolve_columns(batch.schema, self.columns, "a Ray batch")
        records = batch_records(batch, columns, 1, skip_bad=self.options.skip_bad)
        pairing = PairScoring()
        results = list(pairing.merge(self._session.score(pairing.expand(records))))
        added = _added(columns, self.options)
        schema, keep = output_schema(batch.schema, added)
        table = batch.combine_chunks()
        parts = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=batch.schema)]
        return pa.Table.from_batches([with_results(parts[0], results, keep, added, schema)], schema=schema)


def _added(columns: Columns, options: ScoreOptions) -> list[tuple[str, Any]]:
    return result_schema(pairs=columns.pairs, reward=options.reward is not None, per_token=options.per_token,
                         errors=options.skip_bad)  # fmt: skip


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: the cluster's address (None: RAY_ADDRESS, else a local cluster), the
    number of actors (one model each) and the GPUs and CPUs each one takes. Ray Data's read tasks
    need CPUs too: actors that take every CPU of the cluster leave none to read the input with."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    quiet: bool = True  # no Ray Data progress bars or execution logs
    blocks: int | None = None  # split the input into this many blocks (default: Ray's choice)
    init_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayDone:
    """What a Ray run wrote: rows, and the pairs' summary (when written to one file)."""

    rows: int
    summary: PairSummary | None
    stats: ScoreStats


def _read(ray: Any, table: TableInput, blocks: int | None) -> Any:
    """The input as a Ray dataset: Parquet or JSON Lines at any path Ray reads, or a HF dataset."""
    if table.dataset is not None:
        from vhctl.io.tables import open_dataset

        source = open_dataset(table.dataset, split=table.split, config=table.config, revision=table.revision)
        dataset = ray.data.from_arrow(list(source.iter_batches(1 << 16)))
        return dataset.repartition(blocks) if blocks else dataset
    path = table.path or "-"
    suffix = Path(path.rstrip("/")).suffix.lower()
    if path == "-":
        raise UsageError("--engine ray reads a path: give --input PATH or --dataset NAME")
    if suffix in (".jsonl", ".ndjson", ".json"):
        dataset = ray.data.read_json(path)
    elif suffix in ("", ".parquet", ".pq"):
        dataset = ray.data.read_parquet(path)
    else:
        raise UsageError(
            f"--engine ray reads Parquet or JSON Lines, not {path}", hint="convert it to Parquet"
        )
    return dataset.repartition(blocks) if blocks else dataset


def score_with_ray(options: ScoreOptions, table: TableInput, output: str, settings: RaySettings) -> RayDone:
    """Score ``table`` with ``settings.actors`` actors and write Parquet to ``output``.

    A local ``*.parquet`` file is written by this process, in input order and atomically (with
    the pairs' summary); any other destination (a folder, ``s3://...``) by Ray's ``write_parquet``.
    """
    ray = need_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=settings.address, **{"log_to_driver": False, **settings.init_kwargs})
    try:
        return _score(ray, options, table, output, settings)
    finally:
        if started:
            ray.shutdown()


def _score(ray: Any, options: ScoreOptions, table: TableInput, output: str, settings: RaySettings) -> RayDone:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    if settings.quiet:
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = _read(ray, table, settings.blocks)
    schema = dataset.schema()
    schema = getattr(schema, "base_schema", schema)  # Ray's Schema wraps the Arrow one
    columns = resolve_columns(schema, table.columns, table.path or str(table.dataset))
    scored = dataset.map_batches(
        ValueScorer, fn_constructor_kwargs={"options": options, "columns": table.columns},
        batch_size=options.window_records, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        num_gpus=settings.gpus_per_actor or None, num_cpus=settings.cpus_per_actor,
    )  # fmt: skip
    stats = ScoreStats()
    try:
        if "://" in output or not output.endswith((".parquet", ".pq")):
            scored.write_parquet(output)
            stats.records = scored.count()
            return RayDone(stats.records, None, stats)
        summary = (
            PairSummary(by="reward" if options.reward is not None else "value") if columns.pairs else None
        )
        with ParquetOutput(output, schema, _added(columns, options)) as out:
            for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
                out.write_scored(batch)
                if summary is not None:
                    _count(summary, batch, columns)
                stats.records += batch.num_rows
            out.commit()
    except Exception as exc:  # an actor's error comes wrapped in Ray's: report vhctl's own
        cause = _vhctl_cause(exc)
        if cause is None:
            raise
        raise cause from None
    return RayDone(out.rows, summary, stats)


def _vhctl_cause(exc: BaseException) -> VhctlError | None:
    """The vhctl error inside a Ray error (its ``cause``, or the chain of causes), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VhctlError) and type(current).__module__.startswith("vhctl"):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _count(summary: PairSummary, batch: Any, columns: Columns) -> None:
    """Add an output batch's pairs to the summary, from its chosen_* / rejected_* columns."""
    chosen = batch.column(f"chosen_{summary.by}").to_pylist()
    rejected = batch.column(f"rejected_{summary.by}").to_pylist()
    name = columns.fields.get("subset")
    subsets = batch.column(name).to_pylist() if name is not None else [None] * len(chosen)
    for c, r, s in zip(chosen, rejected, subsets, strict=True):
        summary.add(c, r, s)
