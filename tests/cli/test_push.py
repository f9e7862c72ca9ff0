"""``vhctl push``, and hub ids in ``wrap`` / ``attach-reward-adapter``, against the loopback hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from huggingface_hub import HfApi
from safetensors.torch import load_file
from typer.testing import CliRunner

from vhctl.cli.app import app
from vhctl.constants import MANIFEST_NAME, MODEL_CARD_NAME, SAFE_WEIGHTS_NAME, VALUE_HEAD_NAME

if TYPE_CHECKING:
    from click.testing import Result
    from helpers.hub_server import LoopbackHub


REPO = "tester/critic"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("push") / "ckpt"
    result = run("wrap", "vhctl:tiny", "--out", out, "--init", "normal", "--seed", "3")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def ckpt(template: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(template, tmp_path / "ckpt"))


def _same_tensors(a: Path, b: Path) -> None:
    for name in (SAFE_WEIGHTS_NAME, VALUE_HEAD_NAME):
        left, right = load_file(a / name), load_file(b / name)
        assert left.keys() == right.keys(), name
        for key in left:
            assert left[key].dtype == right[key].dtype and left[key].equal(right[key]), f"{name}:{key}"


def test_push_then_wrap_by_hub_id(hub: LoopbackHub, ckpt: Path, tmp_path: Path) -> None:
    pushed = run("push", ckpt, REPO, "--token", hub.token, "--message", "first critic")
    assert pushed.exit_code == 0, pushed.output
    assert "pushed" in pushed.stderr and pushed.stdout == ""
    assert hub.token not in pushed.output
    assert (ckpt / MODEL_CARD_NAME).is_file()

    back = tmp_path / "back"
    wrapped = run("wrap", REPO, "--out", back)  # endpoint from HF_ENDPOINT, through the HF cache
    assert wrapped.exit_code == 0, wrapped.output
    _same_tensors(ckpt, back)
    assert json.loads((back / MANIFEST_NAME).read_text())["value_head"]["init"] == "loaded"


def test_wrap_revision_pins(hub: LoopbackHub, ckpt: Path, tmp_path: Path, template: Path) -> None:
    assert run("push", ckpt, REPO, "--token", hub.token).exit_code == 0
    other = tmp_path / "other"
    assert run("wrap", "vhctl:tiny", "--out", other, "--seed", "4").exit_code == 0
    branch = run("push", other, REPO, "--token", hub.token, "--revision", "v2")
    assert branch.exit_code == 0, branch.output

    result = run("wrap", REPO, "--out", tmp_path / "v2", "--revision", "v2")
    assert result.exit_code == 0, result.output
    assert load_file(tmp_path / "v2" / VALUE_HEAD_NAME)["v_head.summary.weight"].equal(
        load_file(other / VALUE_HEAD_NAME)["v_head.summary.weight"]
    )
    assert run("wrap", REPO, "--out", tmp_path / "main").exit_code == 0
    _same_tensors(template, tmp_path / "main")


def test_wrap_offline_not_cached(
    hub: LoopbackHub, ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("push", ckpt, REPO, "--token", hub.token).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("wrap", REPO, "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE=0" in result.stderr and "Traceback" not in result.output
    # Once cached, offline works.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert run("wrap", REPO, "--out", tmp_path / "y").exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run("wrap", REPO, "--out", tmp_path / "z").exit_code == 0


def test_push_json(hub: LoopbackHub, ckpt: Path) -> None:
    result = run("push", ckpt, REPO, "--token", hub.token, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["commit_oid"] == hub.head(REPO) and report["repo_id"] == REPO
    again = json.loads(run("push", ckpt, REPO, "--token", hub.token, "--json").stdout)
    assert again["commit_oid"] is None


def test_push_dry_run_lists_and_sends_nothing(hub: LoopbackHub, ckpt: Path) -> None:
    result = run("push", ckpt, REPO, "--dry-run")
    assert result.exit_code == 0, result.output
    assert VALUE_HEAD_NAME in result.stdout and MODEL_CARD_NAME in result.stdout
    assert "nothing was sent" in result.stderr
    assert hub.requests == []


def test_push_create_pr_and_revision(hub: LoopbackHub, ckpt: Path) -> None:
    result = run("push", ckpt, REPO, "--token", hub.token, "--create-pr")
    assert result.exit_code == 0, result.output
    assert "/discussions/1" in result.stderr
    assert set(hub.files_at(REPO)) == {".gitattributes"}


def test_push_wrong_token_is_one_line_exit_1(hub: LoopbackHub, ckpt: Path) -> None:
    result = run("push", ckpt, REPO, "--token", "hf_wrong_token_value")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "refused the token" in errors[0] and "Traceback" not in result.output
    assert "hf_wrong_token_value" not in result.output


def test_push_invalid_checkpoint_exit_1(hub: LoopbackHub, ckpt: Path) -> None:
    (ckpt / VALUE_HEAD_NAME).write_bytes(b"not the head")
    result = run("push", ckpt, REPO, "--token", hub.token)
    assert result.exit_code == 1
    assert "not a valid checkpoint" in result.stderr
    assert hub.write_requests() == []


def test_push_endpoint_option(hub: LoopbackHub, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    result = run("push", ckpt, REPO, "--endpoint", hub.url)
    assert result.exit_code == 0, result.output
    assert VALUE_HEAD_NAME in hub.files_at(REPO)


def test_attach_reward_adapter_by_hub_id(hub: LoopbackHub, ckpt: Path, tmp_path: Path) -> None:
    from helpers.tiny_models import make_reward_adapter

    adapter = make_reward_adapter("gpt2", tmp_path / "rm", ckpt)
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("tester/rm")
    api.upload_folder(repo_id="tester/rm", folder_path=adapter)
    result = run("attach-reward-adapter", ckpt, "tester/rm", "--name", "rm")
    assert result.exit_code == 0, result.output
    assert (ckpt / "adapters" / "rm" / "adapter_config.json").is_file()
