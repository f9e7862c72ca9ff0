"""Nothing unsafe is loaded, no secret leaks, nothing escapes the checkpoint folder.

- a malicious pickle (its ``__reduce__`` would create a marker file) is never executed, by wrap,
  from_pretrained or attach-reward-adapter, with or without --allow-pickle (weights_only=True
  refuses it);
- a config with ``auto_map`` never runs its code unless --trust-remote-code is given;
- a token (HF_TOKEN or --token) is never printed, logged or written to any file;
- symlinks leading outside a checkpoint are refused by validate and by push;
- adapter names, manifest paths and weight-index paths cannot point outside the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import make_reward_adapter, make_trl_checkpoint, save_tiny_model
from safetensors.torch import load_file
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.cli.app import app
from vhctl.constants import (
    ADAPTER_PT_NAME,
    ADAPTER_SAFE_NAME,
    MANIFEST_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
)
from vhctl.errors import CheckpointError, ManifestError, UnsafeLoadError, VhctlError
from vhctl.ops.wrap import wrap_model

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None):
    result = runner.invoke(app, list(args), env=env)
    assert "Traceback" not in result.output or args[0] == "-v", result.output
    return result


# -- malicious pickles -----------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``exec``, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_evil_pickle(path: Path, marker: Path, *, legacy: bool = False) -> None:
    """A state dict whose unpickling would run code (torch zip format, or a bare legacy pickle)."""
    state = {"v_head.summary.weight": _Payload(marker), "v_head.summary.bias": torch.zeros(1)}
    if legacy:
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)
    assert not marker.exists()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil_model(tmp_path: Path, marker: Path) -> Path:
    """A model folder whose only weights are a malicious pytorch_model.bin."""
    folder = save_tiny_model("gpt2", tmp_path / "evil_model")
    for path in folder.glob("*.safetensors*"):
        path.unlink()
    write_evil_pickle(folder / PT_WEIGHTS_NAME, marker)
    return folder


def test_pickle_payload_really_runs_when_unpickled_unsafely(tmp_path: Path, marker: Path) -> None:
    """The payload is live: weights_only=False would execute it (so the tests below can fail)."""
    write_evil_pickle(tmp_path / "x.bin", marker)
    torch.load(tmp_path / "x.bin", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_wrap_never_runs_a_pickle(
    tmp_path: Path, evil_model: Path, marker: Path, allow: bool, legacy: bool
) -> None:
    if legacy:
        write_evil_pickle(evil_model / PT_WEIGHTS_NAME, marker, legacy=True)
    out = tmp_path / "out"
    result = cli("wrap", str(evil_model), "--out", str(out), *(["--allow-pickle"] if allow else []))
    assert result.exit_code == 1, result.output
    assert ("pickle" in result.stderr) if not allow else ("cannot read" in result.stderr)
    assert not marker.exists() and not out.exists()


def test_pickle_next_to_safetensors_is_never_opened(tmp_path: Path, marker: Path) -> None:
    """A model with safetensors weights and a (malicious) pickle beside them: the pickle is ignored."""
    folder = save_tiny_model("gpt2", tmp_path / "m")
    write_evil_pickle(folder / PT_WEIGHTS_NAME, marker)
    assert cli("wrap", str(folder), "--out", str(tmp_path / "out")).exit_code == 0
    assert not (tmp_path / "out" / PT_WEIGHTS_NAME).exists()
    AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    # Allowed, the pickle is read with weights_only=True, which refuses the payload.
    result = cli("wrap", str(folder), "--out", str(tmp_path / "out2"), "--allow-pickle")
    assert result.exit_code == 1 and PT_WEIGHTS_NAME in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("allow", [False, True])
def test_from_pretrained_never_runs_a_pickle(evil_model: Path, marker: Path, allow: bool) -> None:
    with pytest.raises((UnsafeLoadError, CheckpointError)):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(evil_model), allow_pickle=allow)
    assert not marker.exists()


def test_trl_bin_layout_with_evil_head(tmp_path: Path, marker: Path) -> None:
    folder = tmp_path / "trl"
    make_trl_checkpoint("gpt2", folder, "bin")
    state = torch.load(folder / PT_WEIGHTS_NAME, weights_only=True)
    state["v_head.summary.weight"] = _Payload(marker)
    torch.save(state, folder / PT_WEIGHTS_NAME)
    for allow in (False, True):
        with pytest.raises((UnsafeLoadError, CheckpointError)):
            AutoModelForCausalLMWithValueHead.from_pretrained(str(folder), allow_pickle=allow)
        result = cli(
            "wrap", str(folder), "--out", str(tmp_path / "out"), *(["--allow-pickle"] if allow else [])
        )
        assert result.exit_code == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.fixture
def evil_adapter(tmp_path: Path, marker: Path) -> tuple[Path, Path]:
    """(a checkpoint, a reward adapter whose weights are a malicious adapter_model.bin)."""
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base)
    state = load_file(str(adapter / ADAPTER_SAFE_NAME))
    (adapter / ADAPTER_SAFE_NAME).unlink()
    state["base_model.model.score.modules_to_save.default.weight"] = _Payload(marker)
    torch.save(state, adapter / ADAPTER_PT_NAME)
    ckpt = tmp_path / "ck"
    wrap_model(str(base), ckpt)
    return ckpt, adapter


@pytest.mark.parametrize("allow", [False, True])
def test_attach_never_runs_a_pickle(evil_adapter: tuple[Path, Path], marker: Path, allow: bool) -> None:
    ckpt, adapter = evil_adapter
    before = (ckpt / MANIFEST_NAME).read_bytes()
    result = cli("attach-reward-adapter", str(ckpt), str(adapter), *(["--allow-pickle"] if allow else []))
    assert result.exit_code == 1, result.output
    assert not marker.exists()
    assert (ckpt / MANIFEST_NAME).read_bytes() == before and not (ckpt / "adapters").exists()


@pytest.mark.parametrize("allow", [False, True])
def test_peft_folder_and_reward_adapter_never_run_a_pickle(
    evil_adapter: tuple[Path, Path], marker: Path, allow: bool
) -> None:
    ckpt, adapter = evil_adapter
    with pytest.raises(VhctlError):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(adapter), allow_pickle=allow)
    from peft import LoraConfig

    with pytest.raises(VhctlError):
        AutoModelForCausalLMWithValueHead.from_pretrained(
            str(ckpt),
            peft_config=LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True),
            reward_adapter=str(adapter),
            allow_pickle=allow,
        )
    assert not marker.exists()


def test_validate_and_info_never_open_pickles(tmp_path: Path, marker: Path) -> None:
    ckpt = tmp_path / "ck"
    wrap_model("vhctl:tiny", ckpt)
    write_evil_pickle(ckpt / PT_WEIGHTS_NAME, marker)
    result = cli("validate", str(ckpt), "--deep", "--json")
    codes = {p["code"] for p in json.loads(result.stdout)["problems"]}
    assert codes == {"pickle-file", "unexpected-file"} and result.exit_code == 0
    assert cli("info", str(ckpt)).exit_code == 0
    assert not marker.exists()


# -- remote code ---------------------------------------------------------------------------------------
def remote_code_model(folder: Path, marker: Path, model_type: str) -> Path:
    """A tiny GPT-2 whose config names its own code in auto_map; importing that code writes ``marker``."""
    save_tiny_model("gpt2", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    (folder / "configuration_evil.py").write_text(
        payload + "from transformers import GPT2Config\n\n"
        f"class EvilConfig(GPT2Config):\n    model_type = {model_type!r}\n"
    )
    (folder / "modeling_evil.py").write_text(
        payload + "from transformers import GPT2LMHeadModel\n\n"
        "from .configuration_evil import EvilConfig\n\n"
        "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n"
    )
    return folder


@pytest.mark.parametrize("model_type", ["gpt2", "evil-gpt"])
def test_auto_map_code_never_runs_by_default(tmp_path: Path, marker: Path, model_type: str) -> None:
    folder = remote_code_model(tmp_path / "m", marker, model_type)
    out = tmp_path / "out"
    result = cli("wrap", str(folder), "--out", str(out))
    if model_type == "gpt2":  # transformers knows the type: its own code is used, not the folder's
        assert result.exit_code == 0, result.output
        assert validate_checkpoint(out) == []
        AutoModelForCausalLMWithValueHead.from_pretrained(str(out))
        AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
        assert cli("info", str(out)).exit_code == 0
    else:
        assert result.exit_code == 1 and "--trust-remote-code" in result.stderr
        assert not out.exists()
        with pytest.raises((VhctlError, ValueError)):
            AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    assert not marker.exists()


def test_trust_remote_code_is_the_only_gate(tmp_path: Path, marker: Path) -> None:
    """With --trust-remote-code the folder's code does run (in a subprocess: it imports modules)."""
    folder = remote_code_model(tmp_path / "m", marker, "evil-gpt")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "hf" / "modules"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "vhctl", "wrap", str(folder), "--out", str(out), "--trust-remote-code"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "pwned"
    assert (out / "configuration_evil.py").is_file() and (out / "modeling_evil.py").is_file()
    assert "configuration_evil.py" in Manifest.read(out).files
    marker.unlink()
    # Checking, inspecting or scoring the result without the flag still runs nothing.
    assert {p.code for p in validate_checkpoint(out, deep=True)} == {"config-unsupported"}
    assert cli("info", str(out)).exit_code == 0
    result = runner.invoke(app, ["score", str(out)], input=b"hello\n")
    assert result.exit_code != 0 and "Traceback" not in result.output
    with pytest.raises((VhctlError, ValueError)):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(out))
    assert not marker.exists()


# -- tokens ------------------------------------------------------------------------------------------
FAKE_TOKEN = "hf_vhctlFakeT0ken4Tests9ZzQxWvUtSrPqOnMlK"


def test_token_is_never_printed_logged_or_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hf_home = Path(os.environ["HF_HOME"])
    env = {"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN}
    base = save_tiny_model("gpt2", tmp_path / "base")
    ck = tmp_path / "ck"
    outputs: list[str] = []
    caplog.set_level(logging.DEBUG)
    commands = [
        ["wrap", str(base), "--out", str(ck), "--token", FAKE_TOKEN],
        ["wrap", "vhctl:tiny", "--out", str(tmp_path / "ck2"), "--token", FAKE_TOKEN, "--json"],
        ["wrap", "someone/not-cached", "--out", str(tmp_path / "x"), "--token", FAKE_TOKEN],
        ["-v", "wrap", "someone/not-cached", "--out", str(tmp_path / "x"), "--token", FAKE_TOKEN],
        ["validate", str(ck), "--deep", "--json"],
        ["info", str(ck)],
        ["info", str(ck), "--json"],
        ["make-ref", str(ck), "--shared", "1"],
        [
            "attach-reward-adapter",
            str(ck),
            str(make_reward_adapter("gpt2", tmp_path / "rm", base)),
            "--token",
            FAKE_TOKEN,
        ],
        ["push", str(ck), "user/repo", "--dry-run", "--token", FAKE_TOKEN],
        ["score", str(ck), "--token", FAKE_TOKEN],
        ["push", str(ck), "user/repo", "--dry-run", "--json"],
        ["-v", "push", str(ck), "user/repo", "--token", FAKE_TOKEN],  # offline: fails
        ["-v", "push", str(ck), "not a repo", "--token", FAKE_TOKEN],
    ]
    codes = []
    for args in commands:
        result = runner.invoke(app, args, env=env, input=b"hello\n" if args[0] == "score" else None)
        codes.append(result.exit_code)
        outputs += [result.stdout, result.stderr, repr(result.exception)]
    assert codes[:2] == [0, 0] and codes[4:12] == [0, 0, 0, 0, 0, 0, 0, 0], codes
    outputs += [r.getMessage() for r in caplog.records]
    text = "\n".join(outputs)
    assert FAKE_TOKEN not in text and FAKE_TOKEN[3:20] not in text
    written = [p for root in (tmp_path, hf_home) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == MANIFEST_NAME for p in written)
    for path in written:
        data = path.read_bytes()
        assert FAKE_TOKEN.encode() not in data and FAKE_TOKEN[3:20].encode() not in data, path


# -- symlinks ------------------------------------------------------------------------------------------
@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    out = tmp_path / "ck"
    wrap_model("vhctl:tiny", out, seed=0)
    return out


@pytest.mark.parametrize("what", ["file", "manifest", "folder"])
def test_symlinks_outside_are_refused_by_validate_and_push(tmp_path: Path, ckpt: Path, what: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")
    if what == "file":
        target = ckpt / "tokenizer_config.json"
        shutil.copyfile(target, secret / "tokenizer_config.json")
        target.unlink()
        target.symlink_to(secret / "tokenizer_config.json")  # same bytes: only the link is wrong
    elif what == "manifest":
        shutil.move(ckpt / MANIFEST_NAME, secret / MANIFEST_NAME)
        (ckpt / MANIFEST_NAME).symlink_to(secret / MANIFEST_NAME)
    else:
        (ckpt / "extra").symlink_to(secret, target_is_directory=True)
    result = cli("validate", str(ckpt), "--json")
    assert result.exit_code == 1
    assert "symlink-outside" in {p["code"] for p in json.loads(result.stdout)["problems"]}
    result = cli("push", str(ckpt), "user/repo", "--dry-run")
    assert result.exit_code == 1 and "PRIVATE KEY" not in result.output
    assert "outside" in result.stderr or "symlink" in result.stderr


def test_symlink_inside_the_checkpoint_is_fine(ckpt: Path) -> None:
    (ckpt / "alias.json").symlink_to("config.json")
    assert {p.code for p in validate_checkpoint(ckpt)} == {"unexpected-file"}


# -- paths that try to escape ----------------------------------------------------------------------------
ESCAPES = [
    "../evil",
    "..",
    "a/../../evil",
    "/etc/passwd",
    "\\\\server\\share",
    "C:\\evil",
    "a\\..\\..\\b",
    "",
    "x\x00y",
]


@pytest.mark.parametrize("name", ESCAPES)
def test_adapter_name_cannot_escape(tmp_path: Path, name: str) -> None:
    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base)
    ckpt = tmp_path / "ck"
    wrap_model(str(base), ckpt)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    from vhctl.ops.attach import attach_adapter

    with pytest.raises(VhctlError, match="adapter name"):
        attach_adapter(ckpt, str(adapter), name=name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def _manifest_dict(ckpt: Path) -> dict:
    return json.loads((ckpt / MANIFEST_NAME).read_text())


@pytest.mark.parametrize("bad", ESCAPES)
def test_manifest_paths_cannot_escape(ckpt: Path, bad: str) -> None:
    data = _manifest_dict(ckpt)
    entry = data["files"]["config.json"]
    for change in (
        lambda d: d["files"].update({bad: entry}),
        lambda d: d.update(adapters={bad: {"path": "adapters/x"}}),
        lambda d: d.update(adapters={"x": {"path": bad}}),
    ):
        d = json.loads(json.dumps(data))
        change(d)
        with pytest.raises(ManifestError):
            Manifest.from_dict(d)
        (ckpt / MANIFEST_NAME).write_text(json.dumps(d))
        result = cli("validate", str(ckpt), "--json")
        assert result.exit_code == 1
        assert "manifest-invalid" in {p["code"] for p in json.loads(result.stdout)["problems"]}
        assert cli("push", str(ckpt), "user/repo", "--dry-run").exit_code == 1


def test_value_head_file_cannot_escape(ckpt: Path) -> None:
    data = _manifest_dict(ckpt)
    data["value_head"]["file"] = "../../value_head.safetensors"
    (ckpt / MANIFEST_NAME).write_text(json.dumps(data))
    problems = validate_checkpoint(ckpt)
    assert "manifest-invalid" in {p.code for p in problems}


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/tmp/outside.safetensors", "a/../../x.safetensors"]
)
def test_weight_index_cannot_point_outside(tmp_path: Path, shard: str) -> None:
    """A TRL-sharded model whose index names a shard outside the folder is refused, never read."""
    folder = tmp_path / "trl"
    make_trl_checkpoint("gpt2", folder, "sharded")
    index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())
    index["weight_map"]["v_head.summary.weight"] = shard
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    result = cli("wrap", str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "shard" in result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(VhctlError):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
