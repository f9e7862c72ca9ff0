"""The shipped tiny model ("vhctl:tiny"), its builder, and the tiny test models of every arch."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import (
    ARCHS,
    CAUSAL_ARCHS,
    LORA_TARGETS,
    REWARD_ARCHS,
    SEQ2SEQ_ARCHS,
    SMALL_SHARD,
    TINY_VOCAB,
    TOKEN_ID,
    TRL_LAYOUTS,
    auto_class,
    make_reward_adapter,
    make_tiny_model,
    make_trl_checkpoint,
    peft_base_folder,
    save_tiny_model,
    tiny_lora_config,
    tiny_tokenizer,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from vhctl._tiny import build as tiny_build
from vhctl._tiny import tiny_model_path
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
)

# PEFT calls a transformers property that transformers deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, TOKEN_ID, TOKEN_ID]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def _forward(model, arch: str) -> torch.Tensor:
    """Logits (batch, seq, vocab) of a tiny model on a fixed padded batch."""
    with torch.no_grad():
        if arch in SEQ2SEQ_ARCHS:
            return model(input_ids=IDS, attention_mask=MASK, decoder_input_ids=IDS[:, :3]).logits
        return model(input_ids=IDS, attention_mask=MASK).logits


def _last_hidden_size(model, arch: str) -> int:
    with torch.no_grad():
        if arch in SEQ2SEQ_ARCHS:
            out = model(input_ids=IDS, decoder_input_ids=IDS[:, :3], output_hidden_states=True)
            return out.decoder_hidden_states[-1].shape[-1]
        return model(input_ids=IDS, output_hidden_states=True).hidden_states[-1].shape[-1]


# --- the shipped model -------------------------------------------------------------------


def test_shipped_folder_holds_the_built_files_only():
    folder = tiny_model_path()
    assert folder == Path(tiny_build.__file__).resolve().parent
    data_files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".py")
    assert data_files == sorted([*tiny_build.OUTPUT_FILES, tiny_build.BUILD_INFO_NAME])
    total = sum((folder / name).stat().st_size for name in data_files)
    assert total < 1_500_000


def test_shipped_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vhctl"]
    for name in (*tiny_build.OUTPUT_FILES, tiny_build.BUILD_INFO_NAME):
        assert any(fnmatch.fnmatch(f"_tiny/{name}", pattern) for pattern in patterns), name


def test_shipped_model_loads_offline_with_every_key():
    model, info = AutoModelForCausalLM.from_pretrained(tiny_model_path(), output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and not info["error_msgs"]
    config = model.config
    assert (config.model_type, config.n_embd, config.n_layer, config.n_head) == ("gpt2", 64, 4, 4)
    assert config.n_positions == 512 and model.dtype == torch.float32
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with safe_open(tiny_model_path() / SAFE_WEIGHTS_NAME, "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert all(handle.get_slice(key).get_dtype() == "F32" for key in handle.keys())


def test_shipped_model_generates():
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path(), padding_side="left")
    batch = tokenizer(["Hello there", "The value head reads"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_shipped_tokenizer_matches_model_and_round_trips():
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    config = json.loads((tiny_model_path() / "config.json").read_text())
    assert tokenizer.is_fast
    assert len(tokenizer) == config["vocab_size"] == TINY_VOCAB == tiny_build.VOCAB_SIZE
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == config["eos_token_id"] == TOKEN_ID
    assert tokenizer.model_max_length == config["n_positions"]
    for text in ["Hello world!", "  spaces\tand\nnewlines ", "Ünïcödé ✓ 数字 123.45", ""]:
        ids = tokenizer(text)["input_ids"]
        assert all(0 <= i < TINY_VOCAB for i in ids)
        assert tokenizer.decode(ids) == text
    # A trained BPE: common words are single tokens, not bytes.
    assert tokenizer.tokenize(" the model") == ["Ġthe", "Ġmodel"]
    assert tokenizer("<|endoftext|>")["input_ids"] == [TOKEN_ID]


def test_shipped_tokenizer_applies_chat_template():
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|system|>\nYou are a helpful assistant.<|endoftext|>\n"
        "<|user|>\nWhat is two plus two?<|endoftext|>\n"
        "<|assistant|>\nFour.<|endoftext|>"
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("two?<|endoftext|>\n<|assistant|>\n")
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert ids.count(TOKEN_ID) == len(MESSAGES)


# --- the builder ---------------------------------------------------------------------------


def test_builder_is_deterministic(tmp_path):
    first = tiny_build.build(tmp_path / "a")
    second = tiny_build.build(tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second] == [*tiny_build.OUTPUT_FILES, "BUILD.txt"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not [p for p in (tmp_path / "a").iterdir() if p.name not in {q.name for q in first}]
    # Same library versions as the committed build -> the very same bytes as the shipped files.
    shipped = tiny_build.read_build_info(tiny_model_path())
    rebuilt = tiny_build.read_build_info(tmp_path / "a")
    for name in tiny_build.OUTPUT_FILES:
        assert rebuilt[name] == tiny_build._sha256(tmp_path / "a" / name)
    versions = ("torch", "transformers", "tokenizers")
    if any(shipped[v] != rebuilt[v] for v in versions):
        pytest.skip(
            f"shipped build used {[shipped[v] for v in versions]}, here {[rebuilt[v] for v in versions]}"
        )
    for name in tiny_build.OUTPUT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tiny_model_path() / name).read_bytes(), name


def test_builder_corpus_is_fixed_text():
    lines = tiny_build.corpus_lines()
    assert lines == tiny_build.corpus_lines()
    assert len(lines) > 1000 and all(isinstance(line, str) for line in lines)


def test_builder_cli_writes_into_out(tmp_path, capsys):
    assert tiny_build.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / SAFE_WEIGHTS_NAME).is_file()
    assert "model.safetensors" in capsys.readouterr().out


# --- tiny models of every arch -------------------------------------------------------------


def test_arch_lists_cover_every_arch():
    assert sorted(CAUSAL_ARCHS + SEQ2SEQ_ARCHS) == sorted(ARCHS)
    assert set(LORA_TARGETS) == set(ARCHS)
    assert set(REWARD_ARCHS) <= set(CAUSAL_ARCHS)
    assert len(tiny_tokenizer()) == TINY_VOCAB
    with pytest.raises(ValueError, match="unknown tiny arch"):
        make_tiny_model("nope")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_builds_runs_saves_and_loads(arch, tmp_path):
    model = make_tiny_model(arch)
    config = model.config
    assert config.model_type == arch
    assert config.vocab_size >= TINY_VOCAB
    assert config.num_hidden_layers == 2
    assert config.hidden_size in (32, 64)
    assert not model.training
    logits = _forward(model, arch)
    assert logits.shape[:2] == ((2, 3) if arch in SEQ2SEQ_ARCHS else (2, 5))
    assert logits.shape[-1] >= TINY_VOCAB and torch.isfinite(logits).all()

    folder = save_tiny_model(arch, tmp_path / arch)
    assert (folder / SAFE_WEIGHTS_NAME).is_file() and (folder / "tokenizer.json").is_file()
    # the attention kernel it was built with: a release whose loader picks another kernel (sdpa for
    # Gemma 2 in transformers 5.20, eager as its config says in 5.24) differs by ~1e-7 in float32
    kernel = config._attn_implementation
    loaded, info = auto_class(arch).from_pretrained(
        folder, output_loading_info=True, attn_implementation=kernel
    )
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    torch.testing.assert_close(_forward(loaded.eval(), arch), logits, rtol=0, atol=0)
    assert len(AutoTokenizer.from_pretrained(folder)) == TINY_VOCAB


def test_opt_hidden_state_has_word_embed_proj_dim():
    model = make_tiny_model("opt")
    assert model.config.word_embed_proj_dim != model.config.hidden_size
    assert _last_hidden_size(model, "opt") == model.config.word_embed_proj_dim


def test_seed_and_dtype_are_honoured():
    a, b, c = (
        make_tiny_model("llama", seed=1),
        make_tiny_model("llama", seed=1),
        make_tiny_model("llama", seed=2),
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert not torch.equal(a.state_dict()[name], c.state_dict()[name])
    assert make_tiny_model("gpt2", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_save_sharded_without_tokenizer(tmp_path):
    folder = save_tiny_model("qwen2", tmp_path / "m", with_tokenizer=False, max_shard_size=SMALL_SHARD)
    index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (folder / SAFE_WEIGHTS_NAME).exists() and not (folder / "tokenizer.json").exists()
    _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()


# --- TRL-style checkpoints and reward adapters --------------------------------------------


def _stored_head(folder: Path, layout: str) -> dict[str, torch.Tensor]:
    """The v_head tensors as they sit on disk, read without TRL."""
    if layout == "safetensors":
        return load_file(folder / SAFE_WEIGHTS_NAME)
    if layout == "sharded":
        shard = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"][V_HEAD_WEIGHT]
        return load_file(folder / shard)
    return torch.load(folder / PT_WEIGHTS_NAME, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    ("arch", "layout"),
    [("gpt2", layout) for layout in TRL_LAYOUTS]
    + [("opt", "sharded"), ("llama", "bin"), ("t5", "safetensors"), ("bart", "peft")],
)
def test_trl_checkpoint_layouts(arch, layout, tmp_path):
    from trl.experimental.ppo.modeling_value_head import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
    )

    folder = tmp_path / "trl"
    weight, bias = make_trl_checkpoint(arch, folder, layout)
    hidden = _last_hidden_size(make_tiny_model(arch), arch)
    assert weight.shape == (1, hidden) and bias.shape == (1,)
    assert bias.item() != 0 and weight.abs().sum() > 0

    stored = _stored_head(folder, layout)
    torch.testing.assert_close(stored[V_HEAD_WEIGHT], weight, rtol=0, atol=0)
    torch.testing.assert_close(stored[V_HEAD_BIAS], bias, rtol=0, atol=0)
    if layout == "peft":
        assert set(stored) == {V_HEAD_WEIGHT, V_HEAD_BIAS}
        config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
        assert Path(config["base_model_name_or_path"]) == peft_base_folder(folder).resolve()
        assert any("lora_" in key for key in load_file(folder / ADAPTER_SAFE_NAME))
    else:
        # The base model loads from the folder; the head keys are the only extra ones.
        _, info = auto_class(arch).from_pretrained(folder, output_loading_info=True)
        assert info["missing_keys"] == set()
        assert info["unexpected_keys"] == {V_HEAD_WEIGHT, V_HEAD_BIAS}

    if layout != "sharded":  # TRL 1.12 looks local shards up on the hub, so it cannot reload them
        trl_cls = (
            AutoModelForSeq2SeqLMWithValueHead if arch in SEQ2SEQ_ARCHS else AutoModelForCausalLMWithValueHead
        )
        reloaded = trl_cls.from_pretrained(str(folder))
        torch.testing.assert_close(reloaded.v_head.summary.weight.detach(), weight, rtol=0, atol=0)
        torch.testing.assert_close(reloaded.v_head.summary.bias.detach(), bias, rtol=0, atol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tiny_lora_config_fits_every_arch(arch):
    import warnings

    from peft import get_peft_model

    config = tiny_lora_config(arch)
    assert config.task_type == ("SEQ_2_SEQ_LM" if arch in SEQ2SEQ_ARCHS else "CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. PEFT fixing fan_in_fan_out for Conv1D
        model = get_peft_model(make_tiny_model(arch), config)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_trl_checkpoint_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="unknown TRL layout"):
        make_trl_checkpoint("gpt2", tmp_path / "x", "zip")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_adapter_is_a_seq_cls_lora_with_score(arch, tmp_path):
    from trl.experimental.ppo.modeling_value_head import AutoModelForCausalLMWithValueHead

    base = save_tiny_model(arch, tmp_path / "base")
    adapter = make_reward_adapter(arch, tmp_path / "rm", base)
    config = json.loads((adapter / ADAPTER_CONFIG_NAME).read_text())
    assert config["task_type"] == "SEQ_CLS" and config["peft_type"] == "LORA"
    assert "score" in config["modules_to_save"]
    assert Path(config["base_model_name_or_path"]) == base.resolve()
    tensors = load_file(adapter / ADAPTER_SAFE_NAME)
    score = [key for key in tensors if "score" in key]
    assert len(score) == 1 and tensors[score[0]].shape == (1, make_tiny_model(arch).config.hidden_size)
    assert not (adapter / "adapter_model.bin").exists()

    # The real consumer takes it: TRL loads it next to a policy adapter and scores with it.
    policy = tmp_path / "policy"
    make_trl_checkpoint(arch, policy, "peft")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(policy), reward_adapter=str(adapter))
    scores = model.compute_reward_score(input_ids=IDS, attention_mask=MASK)
    assert scores.shape[:2] == IDS.shape and torch.isfinite(scores).all()


def test_reward_adapter_refuses_archs_without_score_head(tmp_path):
    with pytest.raises(ValueError, match="no reward adapter for 'cohere'"):
        make_reward_adapter("cohere", tmp_path / "rm", tmp_path / "base")
