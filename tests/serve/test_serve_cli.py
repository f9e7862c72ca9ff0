"""``vhctl serve``'s options, messages and failures (no model traffic), and the pieces behind them."""

from __future__ import annotations

import math
import socket

import pytest
from typer.testing import CliRunner

import vhctl.serve.server as server_module
from vhctl.cli.app import app
from vhctl.constants import SERVE_PREFIX_CACHE_MB
from vhctl.scoring.options import WINDOW_PER_BATCH
from vhctl.scoring.session import finish_result
from vhctl.serve.security import is_loopback, read_api_key

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch):
    """Replace the running server: collect the options the command would serve with."""
    seen = []
    monkeypatch.setattr(server_module, "serve", lambda options, **kwargs: seen.append(options))
    return seen


def test_options_reach_the_server(captured, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k-123\n")
    result = runner.invoke(
        app,
        [
            "serve",
            "ck",
            "--reward-adapter",
            "judge",
            "--max-queue",
            "7",
            "--port",
            "0",
            "--max-length",
            "64",
            "--api-key-file",
            str(key_file),
            "--drain-timeout",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    (options,) = captured
    assert options.model.reward == "judge" and options.max_queue == 7 and options.model.max_length == 64
    assert options.api_key == "k-123" and options.drain_timeout == 2 and options.host == "127.0.0.1"
    assert "k-123" not in result.output
    runner.invoke(app, ["serve", "ck", "--reward"])
    assert captured[-1].model.reward == ""
    runner.invoke(app, ["serve", "ck"], env={"VHCTL_API_KEY": "from-env"})
    assert captured[-1].model.reward is None and captured[-1].api_key == "from-env"


def test_a_server_scores_as_score_does_with_its_own_fixed_fields(captured) -> None:
    # compile auto (eager where no measurement says it pays), the prefix cache on, bad records as 400s
    assert runner.invoke(app, ["serve", "ck"]).exit_code == 0
    model = captured[-1].model
    assert model.compile == "auto" and model.prefix_cache_mb == SERVE_PREFIX_CACHE_MB > 0
    assert model.skip_bad and model.mark_truncated and model.window_records == 16 * WINDOW_PER_BATCH
    assert runner.invoke(app, ["serve", "ck", "--compile", "off", "--prefix-cache-mb", "0"]).exit_code == 0
    assert captured[-1].model.compile == "off" and captured[-1].model.prefix_cache_mb == 0
    bad = runner.invoke(app, ["serve", "ck", "--compile", "maybe"])
    assert bad.exit_code == 2 and "--compile" in bad.stderr


def test_a_public_address_without_a_key_warns(captured) -> None:
    public = runner.invoke(app, ["serve", "ck", "--host", "0.0.0.0"], env={"VHCTL_API_KEY": ""})
    assert public.exit_code == 0
    assert "Warning: listening on 0.0.0.0 without an API key" in public.stderr
    keyed = runner.invoke(app, ["serve", "ck", "--host", "0.0.0.0"], env={"VHCTL_API_KEY": "x"})
    loopback = runner.invoke(app, ["serve", "ck", "--host", "127.0.0.1"], env={"VHCTL_API_KEY": ""})
    assert "Warning" not in keyed.stderr and "Warning" not in loopback.stderr


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--reward", "--reward-adapter", "x"], 2, "--reward and --reward-adapter"),
        (["--api-key-file", "/nonexistent/key"], 2, "cannot read --api-key-file"),
        (["--port", "70000"], 2, "--port"),
    ],
)
def test_bad_options_are_one_line(captured, args, code, text) -> None:
    result = runner.invoke(app, ["serve", "ck", *args])
    assert result.exit_code == code and text in result.output and not captured
    assert "Traceback" not in result.output


def test_an_empty_key_file_is_refused(captured, tmp_path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n  \n")
    result = runner.invoke(app, ["serve", "ck", "--api-key-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.stderr


def test_a_missing_checkpoint_or_a_busy_port_is_one_error_line(tmp_path) -> None:
    missing = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--port", "0", "--device", "cpu"])
    assert missing.exit_code != 0 and missing.stderr.count("Error:") == 1
    assert "Traceback" not in missing.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--port", str(port)])
    assert taken.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr


def test_key_sources_and_loopback_addresses(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("  first-line-key \nsecond\n")
    assert read_api_key(str(key), {"VHCTL_API_KEY": "env"}) == "first-line-key"
    assert read_api_key(None, {"VHCTL_API_KEY": " env "}) == "env"
    assert read_api_key(None, {}) is None and read_api_key(None, {"VHCTL_API_KEY": " "}) is None
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.org", "192.168.1.1"):
        assert not is_loopback(host), host


def test_results_are_json_safe_normalised_and_marked() -> None:
    results = [
        {"value": math.nan, "values": [1.0, math.inf]},
        {"value": 3.0, "reward": -math.inf, "truncated": True},
        {"line": 3, "error": "bad"},
    ]  # "truncated" as the scorer marks it (mark_truncated=True)
    for result in results:
        finish_result(result, (1.0, 2.0))
    assert results[0] == {"value": None, "values": [0.0, None]}
    assert results[1] == {"value": 1.0, "reward": None, "truncated": True}
    assert results[2] == {"line": 3, "error": "bad"}


def _bos_tokenizer():
    """A word-level tokenizer that puts <s> in front of every text, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 50)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_queries_are_tokenized_whole_as_openrlhf_does_or_apart_when_asked() -> None:
    """OpenRLHF decodes queries with their special tokens and its server tokenizes them whole without
    adding any: the default. ``"tokenize": "apart"`` splits off the prompt and never adds the BOS twice."""
    from vhctl.serve.bodies import reward_request, special_texts

    tok = _bos_tokenizer()
    specials = special_texts(tok)
    assert specials == ("<s>", "")
    query, prompt = "<s> w5 w6 w7 w8 </s>", "<s> w5 w6"
    (whole,) = reward_request({"query": [query], "prompts": [prompt], "labels": [None]}, specials)
    assert (whole.text, whole.add_special_tokens, whole.prompt_hint) == (query, False, prompt)
    (bare,) = reward_request({"query": ["w5 w6"]}, specials)  # no BOS in the query: none added
    assert (bare.text, bare.add_special_tokens, bare.prompt_hint) == ("w5 w6", False, None)

    apart = {"tokenize": "apart"}
    (text,) = reward_request({"query": [query], **apart}, specials)
    assert (
        tok(text.text)["input_ids"] == tok(query, add_special_tokens=False)["input_ids"] == [1, 5, 6, 7, 8, 2]
    )
    (pair,) = reward_request({"query": [query], "prompts": [prompt], "labels": [None], **apart}, specials)
    assert (pair.prompt, pair.response) == (" w5 w6", " w7 w8 </s>")
    (plain,) = reward_request({"query": ["w5 w6"], "prompts": ["w5 w6"], **apart}, specials)  # a text
    assert plain.text == "w5 w6" and plain.prompt is None
    from vhctl.serve.bodies import BadRequest

    with pytest.raises(BadRequest, match="'tokenize' must be"):
        reward_request({"query": [query], "tokenize": "split"}, specials)


def test_the_cli_imports_no_http_stack_until_serve_runs() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from vhctl.cli.app import app; "
        "print(*[m in sys.modules for m in ('starlette', 'uvicorn', 'prometheus_client', 'torch')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"] * 4
