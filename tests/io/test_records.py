"""Scoring input parsing: text lines, JSON Lines forms, ids, bad lines, and a fuzz property."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhctl.errors import InputError, VhctlError
from vhctl.io.records import Record, iter_records, parse_line


def read(data: bytes, **kwargs) -> list[Record]:
    return list(iter_records(io.BytesIO(data), **kwargs))


def test_text_lines_keep_their_text_and_line_numbers():
    records = read(b"hello world\n  indented stays  \r\nlast line without newline")
    assert [(r.line, r.text, r.kind) for r in records] == [
        (1, "hello world", "text"),
        (2, "  indented stays  ", "text"),
        (3, "last line without newline", "text"),
    ]
    assert all(not r.has_id for r in records)


def test_blank_lines_are_skipped_but_counted():
    records = read(b"\nfirst\n   \n\t\nsecond\n\n")
    assert [(r.line, r.text) for r in records] == [(2, "first"), (5, "second")]


def test_bom_at_start_is_dropped():
    records = read('\ufeff{"text": "a"}\n'.encode())
    assert records[0].text == "a"


def test_jsonl_forms():
    data = (
        b'{"text": "plain"}\n'
        b'{"prompt": "Q?", "response": " A."}\n'
        b'{"prompt": "only a prompt"}\n'
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        b'  {"text": "leading spaces before the brace", "extra": [1, 2]}\n'
    )
    r = read(data)
    assert (r[0].kind, r[0].text) == ("text", "plain")
    assert (r[1].kind, r[1].prompt, r[1].response) == ("prompt", "Q?", " A.")
    assert (r[2].kind, r[2].prompt, r[2].response) == ("prompt", "only a prompt", None)
    assert r[3].kind == "messages" and r[3].messages[1] == {"role": "assistant", "content": "yo"}
    assert r[4].text == "leading spaces before the brace"


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ('"a-1"', "a-1"),
        ("7", 7),
        ("null", None),
        ("1.5", 1.5),
        ('{"k": [1]}', {"k": [1]}),
        ("[1, 2]", [1, 2]),
    ],
)
def test_ids_of_any_json_type_are_kept(raw_id, expected):
    (record,) = read(f'{{"id": {raw_id}, "text": "x"}}'.encode())
    assert record.has_id and record.id == expected


def test_lines_not_starting_with_a_brace_are_text_even_if_json():
    records = read(b'[1, 2]\n"quoted"\n42\n')
    assert [r.text for r in records] == ["[1, 2]", '"quoted"', "42"]


def test_bad_json_names_its_line():
    with pytest.raises(InputError) as info:
        read(b'{"text": "ok"}\n\n{"text": "broken"\n')
    assert info.value.line == 3
    assert "line 3" in str(info.value) and "invalid JSON" in str(info.value)
    assert isinstance(info.value, VhctlError)


def test_non_utf8_names_its_line():
    with pytest.raises(InputError) as info:
        read(b"fine\nbad \xff\xfe bytes\n")
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_unknown_fields_list_the_accepted_ones():
    with pytest.raises(InputError) as info:
        read(b'{"txt": "typo", "id": 3}\n')
    message = str(info.value)
    assert info.value.line == 1
    assert "'txt'" in message and "'text'" in message and "'messages'" in message and "'prompt'" in message


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"response": "r"}', "no 'prompt'"),
        ('{"text": "a", "messages": []}', "only one"),
        ('{"text": "a", "response": "r"}', "'prompt' + 'response'"),
        ('{"text": 5}', "must be a string"),
        ('{"prompt": "p", "response": null}', "must be a string"),
        ('{"messages": []}', "non-empty"),
        ('{"messages": [{"role": "user"}]}', "no 'content'"),
        ('{"messages": ["hi"]}', "must be an object"),
        ('{"messages": [{"role": "user", "content": 3}]}', "string or an array"),
        ('{"text": "\\ud800"}', "lone surrogate"),
        ('{"text": "a"} trailing', "invalid JSON"),
    ],
)
def test_malformed_objects(line, needle):
    with pytest.raises(InputError) as info:
        parse_line(line.encode(), 4)
    assert info.value.line == 4 and needle in str(info.value)


def test_skip_bad_yields_error_records_and_keeps_going():
    data = b'{"id": "a", "text": "one"}\n{"id": "b", "txt": "two"}\n\xff\n{"id": "d", "text": "four"}\n'
    records = read(data, skip_bad=True)
    assert [(r.line, r.kind) for r in records] == [(1, "text"), (2, "error"), (3, "error"), (4, "text")]
    assert records[1].has_id and records[1].id == "b"
    assert not records[2].has_id
    assert "no known field" in records[1].error and not records[1].error.startswith("line")


def test_string_lines_and_laziness():
    consumed = []

    def lines():
        for i in range(1000):
            consumed.append(i)
            yield f"text {i}\n"

    iterator = iter_records(lines())
    first = next(iterator)
    assert first.text == "text 0" and len(consumed) == 1


def test_empty_input_gives_nothing():
    assert read(b"") == []
    assert read(b"\n\n") == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)), max_size=8))
def test_any_bytes_give_records_or_input_error(chunks):
    data = b"\n".join(chunks)
    try:
        records = read(data)
    except InputError as exc:
        assert exc.line is not None and f"line {exc.line}" in str(exc)
    else:
        for record in records:
            assert record.kind in {"text", "prompt", "messages"}
    for record in read(data, skip_bad=True):  # never raises with skip_bad
        assert record.line >= 1


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=10,
    )
)
def test_any_json_object_gives_a_record_or_input_error(value):
    import json

    line = json.dumps({"data": value, "text" if isinstance(value, str) else "other": value})
    try:
        record = parse_line(line.encode(), 1)
    except InputError:
        return
    assert record is not None and record.text == value


def test_deep_nesting_is_an_input_error():
    with pytest.raises(InputError):
        parse_line(b'{"text": ' + b"[" * 100_000 + b"}", 1)
