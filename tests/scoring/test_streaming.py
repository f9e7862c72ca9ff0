"""``--stream``: a window ends at a pause in the input, so a slow producer's lines are scored as they come."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.tiny_models import tiny_tokenizer
from helpers.torchrun import torchrun_command, torchrun_env  # one process environment for every command here
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.io.records import LineReader, Record, iter_records
from vhctl.scoring import Scorer

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt


# ---------------------------------------------------------------------------- LineReader


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400).map(lambda b: b.replace(b"\r", b"\n")), chunk=st.integers(1, 64))
def test_line_reader_yields_the_lines_a_binary_file_yields(tmp_path_factory, data: bytes, chunk: int) -> None:
    path = tmp_path_factory.mktemp("lr") / "in"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert list(LineReader(handle, chunk=chunk)) == list(io.BytesIO(data))
    assert list(LineReader(io.BytesIO(data), chunk=chunk)) == list(io.BytesIO(data))  # no descriptor


def test_ready_follows_what_the_producer_has_written() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as source:
        reader = LineReader(source)
        assert not reader.ready()  # nothing written yet: reading would wait
        os.write(write_end, b"one\ntwo\n")
        assert reader.ready()
        assert next(reader) == b"one\n"
        assert reader.ready()  # "two" is in the reader's buffer
        assert next(reader) == b"two\n"
        assert not reader.ready()
        os.write(write_end, b"thr")
        assert reader.ready()  # part of a line is there
        os.write(write_end, b"ee\n")
        assert next(reader) == b"three\n"
        os.close(write_end)
        assert reader.ready()  # the end of the input is ready too
        assert list(reader) == []


def test_in_memory_streams_are_always_ready() -> None:
    reader = LineReader(io.BytesIO(b"a\nb"))
    assert reader.ready() and list(reader) == [b"a\n", b"b"] and reader.ready()


# ---------------------------------------------------------------------------- Scorer windows


def _records(n: int) -> list[Record]:
    return list(iter_records([f'{{"id": {i}, "text": "line {i} of {" w" * (i % 7)}"}}\n' for i in range(n)]))


def test_a_window_ends_where_the_input_pauses(ckpt) -> None:
    from vhctl.modeling import load_checkpoint

    model = load_checkpoint(str(ckpt)).eval()
    records = _records(20)
    pauses = {3, 4, 11}  # after these many records, nothing more is waiting for a while
    taken = 0

    def source():
        nonlocal taken
        for record in records:
            taken += 1
            yield record

    scorer = Scorer(model, tiny_tokenizer(), batch_size=4, window=8)
    windows: list[list[int]] = []
    process = scorer._process

    def recording(items):
        windows.append([item.record.id for item in items])
        return process(items)

    scorer._process = recording
    streamed = list(scorer.score(source(), ready=lambda: taken not in pauses))
    assert windows == [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18], [19]]
    plain = list(Scorer(model, tiny_tokenizer(), batch_size=4, window=8).score(records))
    assert [r["id"] for r in streamed] == list(range(20))
    for a, b in zip(streamed, plain, strict=True):
        assert abs(a["value"] - b["value"]) < 1e-5  # other batches, the same values up to float noise


# ---------------------------------------------------------------------------- the command


def _read_line(stream, timeout: float = 120.0) -> bytes:
    """The next output line; fails (instead of hanging) if none comes while the input stays open.

    ``stream`` must be unbuffered (``bufsize=0``): a buffered reader could hold the next lines where
    ``select`` does not see them.
    """
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], timeout)
        assert ready, "no result while the input was still open"
        byte = stream.read(1)
        assert byte, f"the output ended in the middle of a line: {line!r}"
        line += byte
    return line


def _stop(proc: subprocess.Popen) -> None:
    """Kill the command and everything it started (torchrun's workers hold its pipes open)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_score_stream_answers_each_line_before_the_input_ends(ckpt) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vhctl", "score", str(ckpt), "--stream"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=torchrun_env(), bufsize=0,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        got = []
        for i in range(3):  # a producer that waits for each answer before writing the next line
            proc.stdin.write(json.dumps({"id": i, "text": f"sample {i}"}).encode() + b"\n")
            proc.stdin.flush()
            got.append(json.loads(_read_line(proc.stdout)))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert [r["id"] for r in got] == [0, 1, 2]
    finally:
        _stop(proc)
    plain = runner.invoke(
        app,
        ["score", str(ckpt)],
        input="".join(json.dumps({"id": i, "text": f"sample {i}"}) + "\n" for i in range(3)),
    )
    assert plain.exit_code == 0
    for a, b in zip(got, (json.loads(line) for line in plain.stdout.splitlines()), strict=True):
        assert a["id"] == b["id"] and abs(a["value"] - b["value"]) < 1e-5


def test_score_stream_on_a_file_is_the_plain_output(ckpt, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": f"text {i} " * (i % 5 + 1)}) + "\n" for i in range(40))
    )
    plain = runner.invoke(app, ["score", str(ckpt), "--input", str(source), "-b", "3"])
    streamed = runner.invoke(app, ["score", str(ckpt), "--input", str(source), "-b", "3", "--stream"])
    assert plain.exit_code == streamed.exit_code == 0
    assert streamed.stdout == plain.stdout  # a file never pauses: full windows, the same bytes


def test_torchrun_stream_answers_before_the_input_ends(ckpt) -> None:
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    command = [*torchrun_command(), "--standalone", "--nproc-per-node", "2", "-m", "vhctl", "score", str(ckpt),
               "--stream", "-b", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=torchrun_env(), bufsize=0, start_new_session=True)  # fmt: skip
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else b""))
    drain.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        got = []
        for burst in ([0], [1, 2, 3], [4]):  # one line, then three at once, then one
            proc.stdin.write(
                b"".join(json.dumps({"id": i, "text": f"row {i}"}).encode() + b"\n" for i in burst)
            )
            proc.stdin.flush()
            got += [json.loads(_read_line(proc.stdout, 240)) for _ in burst]
        proc.stdin.close()
        code = proc.wait(timeout=120)
    finally:
        _stop(proc)
        drain.join(timeout=60)
    assert code == 0, b"".join(errors).decode(errors="replace")
    assert [r["id"] for r in got] == [0, 1, 2, 3, 4]


def test_a_terminal_is_read_as_a_stream(ckpt) -> None:
    """Typed lines are scored as they are typed (a terminal needs no --stream)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vhctl", "score", str(ckpt)],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=torchrun_env(), bufsize=0,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    try:
        assert proc.stdout is not None
        os.write(master, b"typed by hand\n")
        first = json.loads(_read_line(proc.stdout))
        os.write(master, b"and another\n")
        second = json.loads(_read_line(proc.stdout))
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(timeout=60) == 0
        assert "reading lines from the terminal" in (proc.stderr.read().decode() if proc.stderr else "")
    finally:
        _stop(proc)
        os.close(master)
    plain = runner.invoke(app, ["score", str(ckpt)], input="typed by hand\nand another\n")
    expected = [json.loads(line)["value"] for line in plain.stdout.splitlines()]
    assert [first["value"], second["value"]] == pytest.approx(expected, abs=1e-5)
