"""Push and hub loading, end to end against the loopback hub with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from safetensors.torch import load_file, save_file

from vhctl.checkpoint.manifest import AdapterInfo, Manifest, ValueHeadInfo
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    SAFE_WEIGHTS_NAME,
    TINY_MODEL_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import (
    AuthError,
    CheckpointError,
    HubError,
    OfflineError,
    SourceNotFoundError,
    UnsafeLoadError,
    UsageError,
)
from vhctl.hub import CARD_MARKER, model_card, resolve_model, resolve_model_dir
from vhctl.ops.push import push_checkpoint

if TYPE_CHECKING:
    from helpers.hub_server import LoopbackHub


REPO = "tester/critic"


def _build_checkpoint(folder: Path) -> Path:
    """A tiny GPT-2 value-head checkpoint written by hand (2 layers, hidden 32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(folder)
    head = {V_HEAD_WEIGHT: torch.randn(1, 32) * 0.02, V_HEAD_BIAS: torch.zeros(1)}
    save_file(head, str(folder / VALUE_HEAD_NAME), metadata={"format": "pt"})
    manifest = Manifest(
        kind="policy",
        architecture="causal-lm",
        model_type="gpt2",
        value_head=ValueHeadInfo(file=VALUE_HEAD_NAME, hidden_size=32, init="normal", std=0.02, seed=0),
        base_model={"source": "openai-community/gpt2", "revision": None},
    )
    manifest.refresh_files(folder)
    manifest.write(folder)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_checkpoint(tmp_path_factory.mktemp("template") / "ckpt")


@pytest.fixture
def ckpt(template: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(template, out)
    return out


@pytest.fixture(params=["xet-off", "xet-on"])
def xet(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both transfer modes: LFS batch + PUT, or Xet through the hub's local CAS folder."""
    on = request.param == "xet-on"
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not on)
    return on


@pytest.fixture(autouse=True)
def _xet_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(hub: LoopbackHub, repo: str = REPO, **kwargs: object) -> Path:
    """A plain copy (local_dir: real files, not cache symlinks) of what the hub serves."""
    target = hub.root / "dl" / repo.replace("/", "--")
    return Path(snapshot_download(repo, endpoint=hub.url, token=hub.token, local_dir=target, **kwargs))


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def _add_adapter(ckpt: Path, name: str = "reward") -> None:
    folder = ckpt / "adapters" / name
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "task_type": "SEQ_CLS"}))
    save_file({"score.weight": torch.zeros(1, 32)}, str(folder / ADAPTER_SAFE_NAME))
    manifest = Manifest.read(ckpt)
    manifest.adapters[name] = AdapterInfo(path=f"adapters/{name}", peft_type="LORA", task_type="SEQ_CLS")
    manifest.refresh_files(ckpt)
    manifest.write(ckpt)


# -- push ------------------------------------------------------------------------------------
def test_push_then_download_is_byte_identical(hub: LoopbackHub, ckpt: Path, xet: bool) -> None:
    messages: list[str] = []
    result = push_checkpoint(ckpt, REPO, token=hub.token, progress=messages.append)

    assert result.commit_oid == hub.head(REPO)
    assert result.revision == "main" and not result.dry_run and result.deleted == []
    expected = sorted([*Manifest.read(ckpt).files, MANIFEST_NAME, MODEL_CARD_NAME])
    assert result.files == expected
    assert messages and all(hub.token not in m for m in messages)

    stored = hub.files_at(REPO)
    assert set(stored) == {*expected, ".gitattributes"}
    # The transfer mode really was the one asked for.
    assert (stored[SAFE_WEIGHTS_NAME].xet_hash is not None) is xet
    assert stored[SAFE_WEIGHTS_NAME].lfs and not stored["config.json"].lfs

    local = _download(hub)
    for name in expected:
        assert (local / name).read_bytes() == (ckpt / name).read_bytes(), name
    # One commit on top of the hub's initial one.
    assert hub.commit_count(REPO) == 2


def test_push_writes_model_card(hub: LoopbackHub, ckpt: Path) -> None:
    push_checkpoint(ckpt, REPO, token=hub.token)
    card = (ckpt / MODEL_CARD_NAME).read_text()
    assert hub.read_file(hub.files_at(REPO)[MODEL_CARD_NAME]) == card.encode()
    meta = _front_matter(card)
    assert meta["library_name"] == "vhctl"
    assert meta["base_model"] == "openai-community/gpt2"
    assert {"value-head", "rlhf", "vhctl"} <= set(meta["tags"])
    assert f'AutoModelForCausalLMWithValueHead.from_pretrained("{REPO}")' in card
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}")' in card
    assert f"vhctl wrap {REPO}" in card
    assert "| hidden size | 32 |" in card and "| init | normal |" in card and "| std | 0.02 |" in card
    # The card is outside the manifest: writing it leaves the checkpoint valid.
    from vhctl.checkpoint.validate import has_errors, validate_checkpoint

    assert not has_errors(validate_checkpoint(ckpt))


def test_push_twice_without_change_makes_no_commit(hub: LoopbackHub, ckpt: Path, xet: bool) -> None:
    first = push_checkpoint(ckpt, REPO, token=hub.token)
    second = push_checkpoint(ckpt, REPO, token=hub.token)
    assert first.commit_oid is not None
    assert second.commit_oid is None and second.commit_url is None
    assert hub.head(REPO) == first.commit_oid
    assert hub.commit_count(REPO) == 2


def test_push_to_new_branch(hub: LoopbackHub, ckpt: Path) -> None:
    result = push_checkpoint(ckpt, REPO, token=hub.token, revision="experiment")
    assert result.revision == "experiment"
    assert result.commit_oid == hub.head(REPO, "experiment")
    assert set(hub.files_at(REPO, "main")) == {".gitattributes"}
    assert VALUE_HEAD_NAME in hub.files_at(REPO, "experiment")
    # Pushing again to the (now existing) branch is a no-op.
    assert push_checkpoint(ckpt, REPO, token=hub.token, revision="experiment").commit_oid is None


def test_push_create_pr(hub: LoopbackHub, ckpt: Path) -> None:
    result = push_checkpoint(ckpt, REPO, token=hub.token, create_pr=True, message="Add critic")
    assert result.pr_url is not None and result.pr_url.endswith("/discussions/1")
    assert result.revision == "refs/pr/1"
    assert result.commit_oid == hub.head(REPO, "refs/pr/1")
    assert set(hub.files_at(REPO, "main")) == {".gitattributes"}
    commits = HfApi(endpoint=hub.url, token=hub.token).list_repo_commits(REPO, revision="refs/pr/1")
    assert commits[0].title == "Add critic"


def test_wrong_token_is_a_clear_auth_error(hub: LoopbackHub, ckpt: Path) -> None:
    wrong = "hf_this_token_is_wrong_123"
    with pytest.raises(AuthError) as info:
        push_checkpoint(ckpt, REPO, token=wrong)
    text = str(info.value)
    assert "refused the token" in text and REPO in text and "HF_TOKEN" in text
    assert wrong not in text
    assert info.value.exit_code == 1
    assert REPO not in {repo_id for _, repo_id in hub.repos}


def test_missing_token_says_how_to_log_in(hub: LoopbackHub, ckpt: Path) -> None:
    with pytest.raises(AuthError, match="needs a token"):
        push_checkpoint(ckpt, REPO)


def test_token_from_hf_token(hub: LoopbackHub, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert push_checkpoint(ckpt, REPO).commit_oid == hub.head(REPO)


def test_dry_run_sends_nothing(hub: LoopbackHub, ckpt: Path) -> None:
    result = push_checkpoint(ckpt, REPO, dry_run=True)
    assert result.dry_run and result.commit_oid is None
    assert MODEL_CARD_NAME in result.files and VALUE_HEAD_NAME in result.files
    assert result.sizes[VALUE_HEAD_NAME] == (ckpt / VALUE_HEAD_NAME).stat().st_size
    assert hub.requests == []
    assert not (ckpt / MODEL_CARD_NAME).exists()


def test_invalid_checkpoint_is_never_uploaded(hub: LoopbackHub, ckpt: Path) -> None:
    data = bytearray((ckpt / VALUE_HEAD_NAME).read_bytes())
    data[-1] ^= 0xFF
    (ckpt / VALUE_HEAD_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="nothing was uploaded") as info:
        push_checkpoint(ckpt, REPO, token=hub.token)
    assert any(p.code == "hash-mismatch" for p in info.value.problems)
    assert hub.requests == []
    assert not (ckpt / MODEL_CARD_NAME).exists()


def test_symlink_outside_the_checkpoint_is_refused(hub: LoopbackHub, ckpt: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(ckpt / VALUE_HEAD_NAME, outside)
    (ckpt / VALUE_HEAD_NAME).symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside"):
        push_checkpoint(ckpt, REPO, token=hub.token, validate=False)
    assert hub.requests == []


def test_repush_removes_files_the_checkpoint_dropped(hub: LoopbackHub, ckpt: Path) -> None:
    _add_adapter(ckpt)
    push_checkpoint(ckpt, REPO, token=hub.token)
    assert "adapters/reward/adapter_model.safetensors" in hub.files_at(REPO)
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_commit(REPO, [CommitOperationAdd("notes.txt", b"mine")], commit_message="hand-made")

    shutil.rmtree(ckpt / "adapters")
    manifest = Manifest.read(ckpt)
    manifest.adapters = {}
    manifest.refresh_files(ckpt)
    manifest.write(ckpt)
    result = push_checkpoint(ckpt, REPO, token=hub.token)
    assert result.deleted == [
        "adapters/reward/adapter_config.json",
        "adapters/reward/adapter_model.safetensors",
    ]
    remote = hub.files_at(REPO)
    assert not any(p.startswith("adapters/") for p in remote)
    assert "notes.txt" in remote  # not vhctl's: left alone


def test_push_keeps_a_hand_written_card(hub: LoopbackHub, ckpt: Path) -> None:
    (ckpt / MODEL_CARD_NAME).write_text(
        "---\nlicense: mit\ntags:\n- mine\n---\n# My critic\n\nHand-written.\n"
    )
    push_checkpoint(ckpt, REPO, token=hub.token)
    card = hub.read_file(hub.files_at(REPO)[MODEL_CARD_NAME]).decode()
    assert "Hand-written." in card and CARD_MARKER not in card
    meta = _front_matter(card)
    assert meta["license"] == "mit" and meta["library_name"] == "vhctl"
    assert meta["tags"][0] == "mine" and "value-head" in meta["tags"]


def test_private_push(hub: LoopbackHub, ckpt: Path) -> None:
    push_checkpoint(ckpt, REPO, token=hub.token, private=True)
    assert hub.repos[("model", REPO)].private
    with pytest.raises(SourceNotFoundError, match="private"):
        resolve_model_dir(REPO)
    assert (resolve_model_dir(REPO, token=hub.token) / VALUE_HEAD_NAME).is_file()


def test_private_refused_for_an_existing_public_repo(hub: LoopbackHub, ckpt: Path) -> None:
    push_checkpoint(ckpt, REPO, token=hub.token)
    with pytest.raises(HubError, match="public"):
        push_checkpoint(ckpt, REPO, token=hub.token, private=True)


def test_bare_name_goes_to_the_users_namespace(hub: LoopbackHub, ckpt: Path) -> None:
    result = push_checkpoint(ckpt, "critic", token=hub.token)
    assert result.repo_id == REPO and result.commit_oid == hub.head(REPO)
    assert f'from_pretrained("{REPO}")' in (ckpt / MODEL_CARD_NAME).read_text()


def test_push_refuses_a_bad_repo_id(hub: LoopbackHub, ckpt: Path) -> None:
    with pytest.raises(UsageError):
        push_checkpoint(ckpt, "a/b/c", token=hub.token)


def test_push_offline_is_refused(hub: LoopbackHub, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        push_checkpoint(ckpt, REPO, token=hub.token)
    assert hub.requests == []


def test_unreachable_hub_is_an_offline_error(hf_env: Path, ckpt: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OfflineError, match="cannot reach"):
        push_checkpoint(ckpt, REPO, token="hf_any", endpoint=f"http://127.0.0.1:{port}")


# -- model card --------------------------------------------------------------------------------
def test_model_card_lists_adapters_and_references(ckpt: Path) -> None:
    _add_adapter(ckpt)
    manifest = Manifest.read(ckpt)
    manifest.references = ["ref"]
    manifest.frozen = {"num_shared_layers": 1, "pattern": "transformer.h.{layer}"}
    manifest.write(ckpt)
    card = model_card(ckpt, repo_id=REPO)
    assert "reward-model" in _front_matter(card)["tags"]
    assert "| reward | LORA | SEQ_CLS | reward | `adapters/reward/` |" in card
    assert "`ref/`" in card and 'from_pretrained(f"{folder}/ref")' in card
    assert "the first 1 layers (`transformer.h.{layer}`)" in card
    assert model_card(ckpt, repo_id=REPO) == card  # deterministic


def test_model_card_omits_a_local_base(ckpt: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(ckpt)
    manifest.base_model = {"source": str(tmp_path), "revision": None}
    manifest.write(ckpt)
    assert "base_model" not in _front_matter(model_card(ckpt))


# -- loading by hub id ---------------------------------------------------------------------------
def test_resolve_hub_id_through_the_cache(hub: LoopbackHub, ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "modeling_evil.py").write_text("raise SystemExit")
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80pickle")
    push_checkpoint(ckpt, REPO, token=hub.token, validate=False)
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_commit(
        REPO,
        [
            CommitOperationAdd("modeling_evil.py", ckpt / "modeling_evil.py"),
            CommitOperationAdd("pytorch_model.bin", ckpt / "pytorch_model.bin"),
        ],
        commit_message="extra files",
    )
    resolved = resolve_model(REPO)  # endpoint from HF_ENDPOINT, cache from HF_HOME, read when called
    assert resolved.origin == "hub" and resolved.source == REPO and resolved.commit == hub.head(REPO)
    folder = resolved.path
    assert folder.is_relative_to(tmp_path / "hf-home" / "hub")
    assert _sha(folder / SAFE_WEIGHTS_NAME) == _sha(ckpt / SAFE_WEIGHTS_NAME)
    assert (folder / MANIFEST_NAME).is_file()
    assert not (folder / "modeling_evil.py").exists()  # code: never
    assert not (folder / "pytorch_model.bin").exists()  # pickle: only when allowed
    assert (resolve_model_dir(REPO, allow_pickle=True) / "pytorch_model.bin").is_file()


def test_revision_pins(hub: LoopbackHub, ckpt: Path) -> None:
    first = push_checkpoint(ckpt, REPO, token=hub.token).commit_oid
    save_file({V_HEAD_WEIGHT: torch.ones(1, 32), V_HEAD_BIAS: torch.ones(1)}, str(ckpt / VALUE_HEAD_NAME))
    manifest = Manifest.read(ckpt)
    manifest.refresh_files(ckpt)
    manifest.write(ckpt)
    push_checkpoint(ckpt, REPO, token=hub.token, revision="v2")

    assert load_file(resolve_model_dir(REPO) / VALUE_HEAD_NAME)[V_HEAD_BIAS].item() == 0.0
    assert load_file(resolve_model_dir(REPO, revision="v2") / VALUE_HEAD_NAME)[V_HEAD_BIAS].item() == 1.0
    pinned = resolve_model(REPO, revision=first)
    assert pinned.commit == first and pinned.path.name == first
    with pytest.raises(SourceNotFoundError, match="no revision"):
        resolve_model_dir(REPO, revision="nope")


def test_offline_uses_the_cache(hub: LoopbackHub, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    push_checkpoint(ckpt, REPO, token=hub.token, revision="dev")
    online = resolve_model_dir(REPO, revision="dev")
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir(REPO, revision="dev") == online
    assert hub.requests == []


def test_offline_not_cached_fails_clearly(
    hub: LoopbackHub, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_checkpoint(ckpt, REPO, token=hub.token)
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        resolve_model_dir(REPO)
    text = str(info.value)
    assert REPO in text and "HF_HUB_OFFLINE=0" in text and "download it first" in text
    assert hub.requests == []


def test_unknown_repo(hub: LoopbackHub) -> None:
    with pytest.raises(SourceNotFoundError, match="no model tester/missing"):
        resolve_model_dir("tester/missing")


@pytest.mark.parametrize("name", ["./no-such-dir", "/no/such/dir", "a/b/c", "bad..name"])
def test_not_a_folder_nor_a_repo_id(name: str) -> None:
    with pytest.raises(SourceNotFoundError, match="no such folder"):
        resolve_model_dir(name)


def test_tiny_and_local_folders(ckpt: Path) -> None:
    from vhctl._tiny import tiny_model_path

    assert resolve_model_dir(TINY_MODEL_NAME) == tiny_model_path()
    assert resolve_model(str(ckpt)).origin == "local"
    assert resolve_model_dir(ckpt) == ckpt


def test_pickle_only_repo_needs_allow_pickle(hub: LoopbackHub) -> None:
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("tester/old")
    api.create_commit(
        "tester/old",
        [
            CommitOperationAdd("config.json", b'{"model_type": "gpt2"}'),
            CommitOperationAdd("pytorch_model.bin", b"\x80\x02pickle"),
        ],
        commit_message="old style",
    )
    with pytest.raises(UnsafeLoadError, match="allow-pickle"):
        resolve_model_dir("tester/old")
    assert (resolve_model_dir("tester/old", allow_pickle=True) / "pytorch_model.bin").is_file()


# -- pushed, then loaded back by hub id --------------------------------------------------------
def test_from_pretrained_by_hub_id_has_identical_tensors(hub: LoopbackHub, ckpt: Path) -> None:
    from vhctl import AutoModelForCausalLMWithValueHead

    push_checkpoint(ckpt, REPO, token=hub.token)
    remote = AutoModelForCausalLMWithValueHead.from_pretrained(REPO)
    local = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt))
    remote_state, local_state = remote.state_dict(), local.state_dict()
    assert remote_state.keys() == local_state.keys()
    for key, value in local_state.items():
        assert torch.equal(remote_state[key], value), key
    head = load_file(ckpt / VALUE_HEAD_NAME)
    assert torch.equal(remote_state[V_HEAD_WEIGHT], head[V_HEAD_WEIGHT])


def test_library_push_to_hub_writes_the_same_format(hub: LoopbackHub, ckpt: Path) -> None:
    from vhctl import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt))
    model.push_to_hub(REPO, token=hub.token)
    local = _download(hub)
    meta = _front_matter((local / MODEL_CARD_NAME).read_text())
    assert meta["library_name"] == "vhctl"
    from vhctl.checkpoint.validate import has_errors, validate_checkpoint

    assert not has_errors(validate_checkpoint(local))
    assert torch.equal(
        load_file(local / VALUE_HEAD_NAME)[V_HEAD_WEIGHT], load_file(ckpt / VALUE_HEAD_NAME)[V_HEAD_WEIGHT]
    )
