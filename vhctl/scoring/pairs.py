"""Preference pairs: a pair is scored as its two answers, and their results merged into one.

A record with ``chosen`` and ``rejected`` (:class:`~vhctl.io.records.Record`, kind ``"pair"``)
becomes two consecutive records that share the pair's prompt, so the scorer's prefix sharing
computes the prompt once for both. Their results come back in order and are merged into one
result per pair (``chosen_value``, ``rejected_value``, ``margin``...), while a
:class:`PairSummary` counts how often the chosen answer scores above the rejected one.

How an answer is scored:

- a string answer with a string ``prompt``: prompt + response (as PPO joins them);
- a string answer with a message-list prompt: the prompt's messages and the answer as the
  assistant's message, rendered with the chat template;
- a string answer with no prompt: the text alone;
- a message-list answer: the conversation as given (UltraFeedback-binarised stores the user's turn
  in it); when it starts with the assistant's turn, the prompt (a string as the user's message, or
  a message list) is put in front.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vhctl.io.records import Record

__all__ = ["Z95", "PairScoring", "PairSummary", "Tally", "answer_record", "wilson_interval"]

Z95 = 1.959963984540054  # the normal quantile of 0.975: a two-sided 95 % interval
_PER_ANSWER = ("value", "reward", "values", "truncated")


def answer_record(pair: Record, answer: Any) -> Record:
    """The record that scores one answer of ``pair`` (see the module docstring)."""
    line = pair.line
    if isinstance(answer, list):
        if answer and answer[0].get("role") == "assistant":
            if pair.prompt is not None:
                return Record(line=line, messages=[{"role": "user", "content": pair.prompt}, *answer])
            if pair.messages is not None:
                return Record(line=line, messages=[*pair.messages, *answer])
        return Record(line=line, messages=answer)
    if pair.prompt is not None:
        return Record(line=line, prompt=pair.prompt, response=answer)
    if pair.messages is not None:
        return Record(line=line, messages=[*pair.messages, {"role": "assistant", "content": answer}])
    return Record(line=line, text=answer)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion: good for small counts and near 0 or 1 (unlike
    the normal approximation, it never leaves [0, 1]). (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Tally:
    """Counts over pairs: scored pairs, those where chosen > rejected, ties, unscored ones."""

    pairs: int = 0
    correct: int = 0
    ties: int = 0
    unscored: int = 0  # an answer that could not be scored (skipped bad record, non-finite number)

    def add(self, chosen: float | None, rejected: float | None) -> None:
        self.pairs += 1
        if chosen is None or rejected is None:
            self.unscored += 1
        elif chosen > rejected:
            self.correct += 1
        elif chosen == rejected:
            self.ties += 1

    @property
    def scored(self) -> int:
        return self.pairs - self.unscored

    def to_dict(self) -> dict[str, Any]:
        """Counts, the accuracy (correct / scored: a tie counts as wrong) and its 95 % Wilson interval."""
        low, high = wilson_interval(self.correct, self.scored)
        return {
            "pairs": self.pairs,
            "correct": self.correct,
            "ties": self.ties,
            "unscored": self.unscored,
            "accuracy": self.correct / self.scored if self.scored else None,
            "ci95": [low, high] if self.scored else None,
        }


@dataclass
class PairSummary:
    """Accuracy over preference pairs, overall and per subset (RewardBench's ``subset``).

    ``by``: what is compared, ``"value"`` or ``"reward"`` (the reward adapter's score, when scored).
    """

    by: str = "value"
    total: Tally = field(default_factory=Tally)
    subsets: dict[str, Tally] = field(default_factory=dict)

    def add(self, chosen: float | None, rejected: float | None, subset: Any = None) -> None:
        self.total.add(chosen, rejected)
        if subset is not None:
            self.subsets.setdefault(str(subset), Tally()).add(chosen, rejected)

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``--summary`` writes."""
        return {
            "by": self.by,
            "interval": "wilson",
            **self.total.to_dict(),
            "subsets": {name: self.subsets[name].to_dict() for name in sorted(self.subsets)},
        }

    def lines(self) -> list[str]:
        """The summary as lines for a terminal: the total, then one per subset."""
        rows = [("pairs", self.total)] + [(f"  {name}", self.subsets[name]) for name in sorted(self.subsets)]
        return [_line(name, tally, self.by) for name, tally in rows]


def _line(name: str, tally: Tally, by: str) -> str:
    found = tally.to_dict()
    if found["accuracy"] is None:
        return f"{name}: {tally.pairs} pair(s), none scored"
    low, high = found["ci95"]
    extra = f", {tally.unscored} unscored" if tally.unscored else ""
    return (
        f"{name}: accuracy {found['accuracy']:.4f} by {by} (95% Wilson CI {low:.4f}-{high:.4f}), "
        f"{tally.correct}/{tally.scored} pair(s), {tally.ties} tie(s){extra}"
    )


class PairScoring:
    """Splits pair records into their two answers on the way in, merges their results on the way out.

    Use :meth:`expand` on the records given to the scorer and :meth:`merge` on its (finished)
    results; other records pass through unchanged. The queue between the two holds at most what
    the scorer has read ahead (a window).

    Args:
        summary: Counts each merged pair (None: no counting).
    """

    def __init__(self, summary: PairSummary | None = None) -> None:
        self.summary = summary
        self._read: deque[Record | None] = deque()  # per record read: its pair, or None

    def expand(self, records: Iterable[Record]) -> Iterator[Record]:
        """The records to score: two per pair (chosen, then rejected), one for anything else."""
        for record in records:
            if record.kind == "pair":
                self._read.append(record)
                yield answer_record(record, record.chosen)
                yield answer_record(record, record.rejected)
            else:
                self._read.append(None)
                yield record

    def merge(self, results: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """One result per record read by :meth:`expand`, in order."""
        iterator = iter(results)
        for result in iterator:
            pair = self._read.popleft()
            if pair is None:
                yield result
                continue
            yield self.pair_result(pair, result, next(iterator))

    def pair_result(self, pair: Record, chosen: dict[str, Any], rejected: dict[str, Any]) -> dict[str, Any]:
        """A pair's result: its id and subset, each answer's fields prefixed, the margins."""
        out: dict[str, Any] = {"id": pair.id} if pair.has_id else {}
        if pair.subset is not None:
            out["subset"] = pair.subset
        errors = [
            f"{name}: {r['error']}"
            for name, r in (("chosen", chosen), ("rejected", rejected))
            if "error" in r
        ]
        if errors:
            if self.summary is not None:
                self.summary.add(None, None, pair.subset)
            return {"line": pair.line, **out, "error": "; ".join(errors)}
        for key in _PER_ANSWER:
            for name, result in (("chosen", chosen), ("rejected", rejected)):
                if key in result:
                    out[f"{name}_{key}"] = result[key]
        out["margin"] = _difference(chosen.get("value"), rejected.get("value"))
        if "reward" in chosen:
            out["reward_margin"] = _difference(chosen.get("reward"), rejected.get("reward"))
        if self.summary is not None:
            by = self.summary.by
            self.summary.add(chosen.get(by), rejected.get(by), pair.subset)
        return out


def _difference(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    found = a - b
    return found if math.isfinite(found) else None
