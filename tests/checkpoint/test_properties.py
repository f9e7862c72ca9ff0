"""Property-based tests: whatever bytes or JSON come in, the readers answer or raise a vhctl error.

The readers that take untrusted input (the manifest, a safetensors header, the scoring input) must
never fail with another exception type: that would be a traceback for the user instead of one
clear line. Each property feeds arbitrary data, and data close to valid (a valid document with one
part replaced by arbitrary JSON), which reaches deeper code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo
from vhctl.checkpoint.tensors import read_header
from vhctl.checkpoint.validate import manifest_type_errors, validate_checkpoint
from vhctl.constants import ARCH_CAUSAL, KIND_POLICY, MANIFEST_NAME, VALUE_HEAD_NAME
from vhctl.errors import InputError, ManifestError, VhctlError
from vhctl.io.records import Record, iter_records, parse_line

# No example database: these tests do not depend on (or leave) state from earlier runs.
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def valid_manifest() -> dict[str, Any]:
    manifest = Manifest(
        kind=KIND_POLICY,
        architecture=ARCH_CAUSAL,
        model_type="gpt2",
        value_head=ValueHeadInfo(file=VALUE_HEAD_NAME, hidden_size=32, seed=0),
        base_model={"source": "vhctl:tiny", "revision": None},
    )
    data = manifest.to_dict()
    data["files"] = {"config.json": {"size": 10, "sha256": "0" * 64}}
    data["adapters"] = {"rm": {"path": "adapters/rm", "peft_type": "LORA", "hidden_size": 32}}
    data["reference"] = {
        "policy": "..",
        "num_shared_layers": 1,
        "shared_tensors": ["a"],
        "shared_sha256": "0" * 64,
    }
    return data


VALID = valid_manifest()


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    return out


PATHS = _paths(VALID)[1:]


@st.composite
def near_valid_manifests(draw: st.DrawFn) -> Any:
    """A valid manifest with one to three parts replaced by arbitrary JSON, or deleted."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        for key in path[:-1]:
            if not isinstance(parent, dict) or key not in parent:
                break
            parent = parent[key]
        else:
            if isinstance(parent, dict):
                if draw(st.booleans()):
                    parent[path[-1]] = draw(json_values)
                else:
                    parent.pop(path[-1], None)
    return data


def _check_manifest_result(data: Any) -> None:
    try:
        manifest = Manifest.from_dict(data)
    except ManifestError:
        return
    # A manifest that parses is either well typed or its problems are listed, never a crash.
    assert isinstance(manifest_type_errors(manifest), list)
    manifest.to_json()


@SETTINGS
@given(json_values)
def test_manifest_from_any_json(data: Any) -> None:
    _check_manifest_result(data)


@SETTINGS
@given(near_valid_manifests())
def test_manifest_from_near_valid_json(data: Any) -> None:
    _check_manifest_result(data)


@SETTINGS
@given(st.binary(max_size=300) | near_valid_manifests().map(lambda d: json.dumps(d).encode()))
def test_manifest_read_any_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    try:
        Manifest.read(tmp_path)
    except ManifestError:
        pass


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(near_valid_manifests())
def test_validate_never_crashes_on_a_bad_manifest(tmp_path: Path, data: Any) -> None:
    """validate lists problems for any manifest; it raises only for a path that is not a folder."""
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    problems = validate_checkpoint(tmp_path)
    assert problems and all(p.code and p.message for p in problems)


# -- safetensors headers ---------------------------------------------------------------------------------
@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Header length + a JSON header (often plausible) + some data bytes."""
    # dtype: strings only here; a non-string dtype is test_header_with_non_string_dtype below.
    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X9"]) | st.text(max_size=4),
            "shape": st.lists(st.integers(-2, 5), max_size=3) | json_values,
            "data_offsets": st.lists(st.integers(-4, 64), min_size=2, max_size=2) | json_values,
        }
    )
    header = draw(st.dictionaries(st.text(max_size=8), entry | json_values, max_size=3))
    raw = json.dumps(header).encode()
    length = draw(st.sampled_from([len(raw), len(raw) + 1, 0, 2**63]) | st.integers(0, 2**64 - 1))
    data = draw(st.binary(max_size=64))
    return length.to_bytes(8, "little") + raw + data


@SETTINGS
@given(st.binary(max_size=200) | safetensors_files())
def test_safetensors_header_any_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    try:
        header = read_header(path)
    except VhctlError:
        return
    for info in header.tensors.values():
        assert header.data_start <= info.start <= info.end <= header.file_size


def test_header_with_non_string_dtype(tmp_path: Path) -> None:
    raw = json.dumps({"t": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(VhctlError):
        read_header(path)


# -- scoring input -----------------------------------------------------------------------------------------
fields = st.sampled_from(["text", "prompt", "response", "messages", "id", "role", "content", "x"])
messages = st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "x"]), json_values | st.text(), max_size=3),
    max_size=3,
)
json_lines = st.dictionaries(fields, json_values | messages | st.text(), max_size=4).map(
    lambda d: json.dumps(d, ensure_ascii=False).encode()
)
odd_lines = st.sampled_from(
    [
        b"{",
        b"{}",
        b"[1]",
        b'{"text": "\\ud800"}',
        b"\xff\xfe",
        b'\xef\xbb\xbf{"text": "a"}',
        b"{" * 5000,
        b'{"text": 1e999}',
        b'{"id": ' + b"9" * 5000 + b', "text": "a"}',
        b"\r\n",
        b" \t ",
        b"\x00",
    ]
)
lines = st.binary(max_size=80) | json_lines | odd_lines


def _check_record(record: Record | None, number: int) -> None:
    if record is None:
        return
    assert record.line == number
    assert record.kind in ("text", "prompt", "messages", "error")
    if record.kind == "text":
        assert isinstance(record.text, str)


@SETTINGS
@given(lines)
def test_parse_line_any_bytes(raw: bytes) -> None:
    try:
        record = parse_line(raw, 3)
    except InputError as exc:
        assert exc.line == 3 and str(exc).startswith("line 3:")
        return
    _check_record(record, 3)


@SETTINGS
@given(st.lists(lines, max_size=8), st.booleans())
def test_iter_records_any_stream(raw_lines: list[bytes], skip_bad: bool) -> None:
    stream = [line.replace(b"\n", b" ") + b"\n" for line in raw_lines]
    try:
        records = list(iter_records(stream, skip_bad=skip_bad))
    except InputError as exc:
        assert not skip_bad and exc.line is not None and 1 <= exc.line <= len(stream)
        return
    numbers = [r.line for r in records]
    assert numbers == sorted(set(numbers))  # in order, none twice
    for record in records:
        _check_record(record, record.line)
    if skip_bad:  # every non-blank line gives exactly one record
        assert len(records) == sum(not _blank(line, n) for n, line in enumerate(stream, start=1))


def _blank(raw: bytes, number: int) -> bool:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if number == 1:
        text = text.removeprefix("\ufeff")
    return not text.strip()


@pytest.mark.parametrize("raw", [b"\xff", b"{bad", b'{"nothing": 1}', b'{"text": 5}'])
def test_bad_lines_raise_input_error(raw: bytes) -> None:
    with pytest.raises(InputError):
        parse_line(raw, 1)
