"""Preference pairs: answer records, merging results back, the accuracy and its Wilson interval."""

from __future__ import annotations

import math

import pytest

from vhctl.io.records import Record
from vhctl.scoring.pairs import PairScoring, PairSummary, Tally, answer_record, wilson_interval

USER = {"role": "user", "content": "q"}


def test_wilson_interval_matches_published_values() -> None:
    # Newcombe (1998), table I: 0/10 -> 0 to 0.2775; 81/263 -> 0.2553 to 0.3662 (Wilson, no correction)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    low, high = wilson_interval(5, 10)
    assert math.isclose(low + high, 1.0) and low == pytest.approx(0.2366, abs=5e-5)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 0) == (0.0, 1.0)


def test_answer_records_share_the_prompt() -> None:
    pair = Record(line=3, prompt="p", chosen="a", rejected=[{"role": "assistant", "content": "b"}])
    assert answer_record(pair, pair.chosen) == Record(line=3, prompt="p", response="a")
    assert answer_record(pair, pair.rejected).messages == [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "b"}
    ]  # fmt: skip
    conversation = [USER, {"role": "assistant", "content": "x"}]
    pair = Record(line=1, prompt="q", chosen=conversation, rejected="y")
    assert answer_record(pair, pair.chosen).messages == conversation  # UltraFeedback: the turn is in it
    assert answer_record(Record(line=1, chosen="a", rejected="b"), "a") == Record(line=1, text="a")
    chat_prompt = Record(line=1, messages=[USER], chosen="a", rejected="b")
    assert answer_record(chat_prompt, "a").messages == [USER, {"role": "assistant", "content": "a"}]


def test_expand_and_merge_keep_order_ids_and_subsets() -> None:
    summary = PairSummary()
    pairing = PairScoring(summary)
    records = [
        Record(line=1, text="plain", id="t", has_id=True),
        Record(line=2, prompt="p", chosen="a", rejected="b", id=7, has_id=True, subset="math"),
        Record(line=3, chosen="c", rejected="d", subset="chat"),
        Record(line=4, chosen="e", rejected="f", subset="chat"),
    ]
    expanded = list(pairing.expand(records))
    assert [r.kind for r in expanded] == ["text", "prompt", "prompt", "text", "text", "text", "text"]
    scores = [{"id": "t", "value": 0.5}, {"value": 2.0}, {"value": 1.0}, {"value": 1.0}, {"value": 1.0},
              {"line": 4, "error": "too odd"}, {"value": 0.0}]  # fmt: skip
    merged = list(pairing.merge(scores))
    assert merged[0] == {"id": "t", "value": 0.5}
    assert merged[1] == {"id": 7, "subset": "math", "chosen_value": 2.0, "rejected_value": 1.0, "margin": 1.0}
    assert merged[2]["margin"] == 0.0 and merged[3] == {
        "line": 4,
        "subset": "chat",
        "error": "chosen: too odd",
    }
    found = summary.to_dict()
    assert (found["pairs"], found["correct"], found["ties"], found["unscored"]) == (3, 1, 1, 1)
    assert found["accuracy"] == 0.5 and found["interval"] == "wilson"
    assert found["subsets"]["chat"]["pairs"] == 2 and found["subsets"]["chat"]["accuracy"] == 0.0
    assert found["subsets"]["math"]["accuracy"] == 1.0
    assert summary.lines()[0].startswith("pairs: accuracy 0.5000 by value (95% Wilson CI")


def test_rewards_are_merged_and_compared_when_asked() -> None:
    summary = PairSummary(by="reward")
    pairing = PairScoring(summary)
    list(pairing.expand([Record(line=1, chosen="a", rejected="b")]))
    (merged,) = pairing.merge([{"value": 0.0, "reward": 1.0}, {"value": 1.0, "reward": -1.0}])
    assert merged["margin"] == -1.0 and merged["reward_margin"] == 2.0
    assert summary.total.correct == 1  # by reward, although the value says otherwise


def test_a_tally_of_nothing_has_no_accuracy() -> None:
    assert Tally().to_dict()["accuracy"] is None
    assert PairSummary().lines() == ["pairs: 0 pair(s), none scored"]
