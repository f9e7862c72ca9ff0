"""``PreTrainedModelWrapper``: the shared machinery of the value-head models.

Same names, signatures and behaviour as TRL's class of the same name (trl <= 1.12), so training
code can switch its import; loading and saving go through the vhctl checkpoint format.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vhctl.checkpoint.adapters import read_reward_adapter
from vhctl.checkpoint.validate import require_valid
from vhctl.constants import V_HEAD_PREFIX
from vhctl.errors import AdapterError, UsageError
from vhctl.hub.push import PushResult, upload_checkpoint
from vhctl.modeling.loading import LoadOptions, load_wrapper
from vhctl.modeling.peft_types import KBIT_ARGS, peft_model_types
from vhctl.modeling.provenance import Provenance
from vhctl.modeling.reward import reward_score_head
from vhctl.modeling.saving import save_wrapper
from vhctl.modeling.value_head import ValueHead

__all__ = ["PreTrainedModelWrapper"]

logger = logging.getLogger("vhctl")

_PEFT_POP = ("peft_config", "reward_adapter", "reward_adapter_name", "is_trainable")
_VHCTL_POP = ("allow_pickle",)


def _kbit_arg_names() -> frozenset[str]:
    return KBIT_ARGS


def _cache_arg_name(model: Any) -> str:
    """``cache`` for transformers versions whose forward takes it, else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _last_hidden_parameter(model: Any) -> str | None:
    """The name (as in ``hf_device_map``) of the last parameter of the module that outputs the last hidden state."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PeftModel
    core = getattr(hf, "base_model", hf)  # the backbone, without the LM head
    seq2seq = getattr(getattr(hf, "config", None), "is_encoder_decoder", False)
    if seq2seq and callable(getattr(hf, "get_decoder", None)):
        core = hf.get_decoder()
    prefix = next((name for name, module in hf.named_modules() if module is core), "")
    names = [name for name, _ in core.named_parameters()]
    if not names:
        return None
    return f"{prefix}.{names[-1]}" if prefix else names[-1]


def _device_map_lookup(device_map: dict[str, Any], name: str) -> Any:
    """The device ``device_map`` gives parameter ``name`` (its longest matching module prefix)."""
    best: tuple[int, Any] | None = None
    for key, where in device_map.items():
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > best[0]:
                best = (len(key), where)
    return best[1] if best is not None else None


class PreTrainedModelWrapper(nn.Module):
    """Wraps a ``transformers`` model (or a PEFT model) and adds value-head plumbing.

    The base of :class:`~vhctl.modeling.causal.AutoModelForCausalLMWithValueHead` and
    :class:`~vhctl.modeling.seq2seq.AutoModelForSeq2SeqLMWithValueHead`, which add the ``v_head``
    and ``forward``. Build one with ``from_pretrained``; the constructor takes a model already built.

    Args:
        pretrained_model: The ``transformers`` model (or ``peft.PeftModel``) to wrap.
        score_module: The frozen ``score`` head of a reward adapter, stored as ``self.score``: a
            ``Linear(hidden, num_labels)`` (see ``add_and_load_reward_modeling_adapter``).
        supports_rm_adapter: Whether a reward adapter is loaded, so ``compute_reward_score`` works.
        rm_adapter_name: The PEFT adapter name of the reward adapter.
        **kwargs: The value-head arguments (``summary_dropout_prob``, ``v_head_initializer_range``,
            ``v_head_init_strategy``), read by the subclasses' constructors.

    Attributes:
        pretrained_model: the wrapped model; call its methods directly for anything not wrapped.
        transformers_parent_class: the auto class used to load the wrapped model.
        supported_args: the keyword arguments that belong to the value head.
    """

    v_head: ValueHead  # set by the subclasses' constructors
    transformers_parent_class: Any = None
    supported_args: tuple[str, ...] | None = None
    supported_modules = ("v_head",)
    supported_rm_modules = ("score",)
    architecture: str = ""

    def __init__(
        self,
        pretrained_model: Any = None,
        score_module: nn.Module | None = None,
        supports_rm_adapter: bool = False,
        rm_adapter_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.prepare_inputs_for_generation = pretrained_model.prepare_inputs_for_generation
        self.is_loaded_in_8bit = getattr(pretrained_model, "is_loaded_in_8bit", False)
        self.is_loaded_in_4bit = getattr(pretrained_model, "is_loaded_in_4bit", False)
        self.is_sequential_parallel = False
        for name in (
            "gradient_checkpointing_disable",
            "gradient_checkpointing_enable",
            "enable_input_require_grads",
        ):
            if hasattr(pretrained_model, name):
                setattr(self, name, getattr(pretrained_model, name))
        self.supports_rm_adapter = supports_rm_adapter
        self.rm_adapter_name = rm_adapter_name
        self.policy_adapter_name = "default"
        self.is_peft_model = isinstance(pretrained_model, peft_model_types())
        self.current_device: Any = None
        if score_module is not None:
            self.score = score_module
        # Where the model came from, for save_pretrained's manifest (not part of TRL's API).
        self.provenance = Provenance()

    # ------------------------------------------------------------------------------------------
    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split kwargs into (value-head args, transformers args, kbit-training args)."""
        supported = set(cls.supported_args or ())
        kbit = _kbit_arg_names()
        head_kwargs, model_kwargs, kbit_kwargs = {}, {}, {}
        for key, value in kwargs.items():
            if key in supported:
                head_kwargs[key] = value
            elif key in kbit:
                kbit_kwargs[key] = value
            else:
                model_kwargs[key] = value
        return head_kwargs, model_kwargs, kbit_kwargs

    @classmethod
    def _get_current_device(cls) -> Any:
        """The device this process should use: its local rank's GPU under a launcher, else CPU."""
        if torch.cuda.is_available():
            return int(os.environ.get("LOCAL_RANK", "0"))
        return "cpu"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Load a model with a value head from a hub id, a local folder, or a built model.

        Args:
            pretrained_model_name_or_path: a hub id, a local folder (vhctl checkpoint, TRL-style
                checkpoint, plain transformers model or PEFT adapter), ``"vhctl:tiny"``, or an already
                built ``PreTrainedModel`` / ``PeftModel``.
            *model_args: passed on to the transformers ``from_pretrained``.
            **kwargs: value-head args (``summary_dropout_prob``, ``v_head_initializer_range``,
                ``v_head_init_strategy``), PEFT args (``peft_config``, ``reward_adapter``,
                ``reward_adapter_name``, ``is_trainable``, kbit-training args), ``allow_pickle``
                (default False: pickle weights are refused) and everything else for transformers
                (``dtype``, ``device_map``, ``revision``, ``token``, ``quantization_config``...).

        Returns:
            The wrapper (an instance of ``cls``), with the head found in the source loaded, or a new
                head (with a warning naming the files looked in) when the source has none. A vhctl
                reference that shares layers gets them from its policy; a policy's shared layers are
                frozen, as its manifest records.

        Raises:
            VhctlError: for a source that cannot be found or read, or a head that does not fit.
        """
        peft_kwargs = {k: kwargs.pop(k) for k in _PEFT_POP if k in kwargs}
        vhctl_kwargs = {k: kwargs.pop(k) for k in _VHCTL_POP if k in kwargs}
        head_kwargs, model_kwargs, kbit_kwargs = cls._split_kwargs(kwargs)
        options = LoadOptions(
            head_kwargs=head_kwargs,
            model_kwargs=model_kwargs,
            kbit_kwargs=kbit_kwargs,
            model_args=model_args,
            peft_config=peft_kwargs.get("peft_config"),
            reward_adapter=peft_kwargs.get("reward_adapter"),
            reward_adapter_name=peft_kwargs.get("reward_adapter_name", "reward_adapter"),
            is_trainable=peft_kwargs.get("is_trainable", False),
            allow_pickle=bool(vhctl_kwargs.get("allow_pickle", False)),
        )
        return load_wrapper(cls, pretrained_model_name_or_path, options)

    @classmethod
    def add_and_load_reward_modeling_adapter(
        cls,
        pretrained_model: Any,
        adapter_model_id: str,
        adapter_name: str = "reward_model_adapter",
        token: str | None = None,
    ) -> nn.Module:
        """Load a PEFT reward adapter next to the policy adapter and return its ``score`` head (frozen).

        The adapter (local folder or hub id) must hold a ``score`` Linear, as PEFT saves a
        sequence-classification adapter with ``modules_to_save=["score"]``.

        Args:
            pretrained_model: The ``peft.PeftModel`` holding the policy adapter; the reward adapter is
                loaded into it, not trainable.
            adapter_model_id: A local folder or hub id of the reward adapter.
            adapter_name: The PEFT name to load it under.
            token: A hub token, for a private hub id (never printed or stored).

        Returns:
            The reward adapter's ``score`` head, a frozen ``Linear(hidden, num_labels)`` (weight
                ``(num_labels, hidden)``) in the model's dtype, on this process's device.

        Raises:
            AdapterError: the adapter has no ``score`` head, or cannot be read.
        """
        folder, score_state = read_reward_adapter(adapter_model_id, token=token)
        pretrained_model.load_adapter(str(folder), adapter_name, is_trainable=False)
        pretrained_model.train()
        dtype = getattr(pretrained_model, "dtype", torch.float32)
        return reward_score_head(score_state, dtype=dtype, device=cls._get_current_device())

    # ------------------------------------------------------------------------------------------
    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> PushResult:
        """Save in the vhctl format (with a model card) and upload it in one commit.

        The checkpoint is written to a temporary folder with ``save_pretrained``, validated, and
        uploaded as ``vhctl push`` does (:func:`vhctl.hub.upload_checkpoint`).

        Args:
            repo_id: The hub repository, ``namespace/name`` (created when missing).
            *args: The commit message, as TRL's ``push_to_hub`` took it positionally.
            **kwargs: ``private``, ``revision`` (a branch, created from main when missing),
                ``create_pr``, ``token``, ``endpoint`` and ``commit_message`` go to the push; the rest
                to ``save_pretrained``.

        Returns:
            A :class:`vhctl.hub.PushResult` with the repo, revision, commit id (None when nothing
                changed), pull-request URL and the files uploaded.
        """
        allowed = {"private", "revision", "create_pr", "token", "endpoint"}
        push_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in allowed}
        message = kwargs.pop("commit_message", None) or (args[0] if args else None)
        with tempfile.TemporaryDirectory(prefix="vhctl-push-") as tmp:
            self.save_pretrained(tmp, **kwargs)
            require_valid(tmp, refusing="nothing was uploaded")
            return upload_checkpoint(tmp, repo_id, message=message, **push_kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """Write the vhctl checkpoint format into ``save_directory``.

        The base model goes in as ``transformers`` writes it (loadable with no missing or unexpected
        keys), the head into ``value_head.safetensors``, then ``vhctl.json`` with every file's hash.
        A PEFT policy writes its adapter instead of the base. Files get the modes ``cp`` would give.

        Args:
            save_directory: The folder to write (created when missing).
            *args: Passed to the wrapped model's ``save_pretrained``.
            **kwargs: Passed to the wrapped model's ``save_pretrained`` (``max_shard_size``...); a
                ``state_dict`` may carry ``v_head.*`` keys, which go to the head file instead.
        """
        save_wrapper(self, Path(save_directory), *args, **kwargs)

    # TRL's signature, not nn.Module's overloads: (*args, **kwargs) go to both state dicts.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped model's state dict plus ``v_head.*`` (only ``v_head.*`` for a PEFT model).

        Args:
            *args: Passed to ``state_dict`` of the wrapped model and of the head.
            **kwargs: Passed to ``state_dict`` of the wrapped model and of the head.

        Returns:
            The wrapped model's keys and tensors, plus ``v_head.summary.weight`` ``(1, hidden)`` and
                ``v_head.summary.bias`` ``(1,)``.
        """
        if self.is_peft_model:
            state: dict[str, Any] = {}
        else:
            state = self.pretrained_model.state_dict(*args, **kwargs)
        for key, value in self.v_head.state_dict(*args, **kwargs).items():
            state[f"{V_HEAD_PREFIX}{key}"] = value
        return state

    def post_init(self, state_dict: dict[str, Any]) -> None:
        """Load the ``v_head.*`` entries of ``state_dict`` into the head and place it by device map.

        Args:
            state_dict: A state dict; keys containing ``v_head.`` (``v_head.summary.weight``
                ``(1, hidden)``, ``v_head.summary.bias`` ``(1,)``, with any prefix) go to the head,
                the others are ignored.
        """
        head_state = {}
        for key in list(state_dict.keys()):
            idx = key.find(V_HEAD_PREFIX)
            if idx >= 0:
                head_state[key[idx + len(V_HEAD_PREFIX) :]] = state_dict[key]
        if head_state:
            missing, unexpected = self.v_head.load_state_dict(head_state, strict=False)
            if unexpected:
                logger.warning("ignored unexpected value-head keys: %s", ", ".join(unexpected))
        self.place_head_by_device_map()

    def _head_device(self) -> Any:
        """Where the last hidden state lands under a device map (None when there is no map).

        That is the device of the module computing it (the backbone's final norm, the decoder's for
        seq2seq), not the LM head's: a tied LM head sits with the input embeddings on the first GPU.
        Offload is refused: a map that sends modules to disk, or some to the CPU and others to GPUs.
        """
        device_map = getattr(self.pretrained_model, "hf_device_map", None)
        if not device_map:
            return None
        offloaded = [(name, where) for name, where in device_map.items() if where in ("cpu", "disk")]
        if offloaded and (len(offloaded) < len(device_map) or any(w == "disk" for _, w in offloaded)):
            shown = ", ".join(f"{name or '(all)'} -> {where}" for name, where in offloaded[:3])
            more = f" and {len(offloaded) - 3} more" if len(offloaded) > 3 else ""
            raise UsageError(
                f"the device map offloads {len(offloaded)} of {len(device_map)} modules ({shown}{more}); "
                "vhctl scores and trains with the whole model on GPUs, or all of it on the CPU, not offloaded",
                hint="give the GPUs more memory (max_memory), load in bfloat16, use more GPUs, or load on the CPU",
            )
        name = _last_hidden_parameter(self.pretrained_model)
        where = _device_map_lookup(device_map, name) if name is not None else None
        if where is None:
            where = list(device_map.values())[-1]
        return torch.device(f"cuda:{where}") if isinstance(where, int) else torch.device(where)

    def place_head_by_device_map(self) -> None:
        """Move the head to where the last hidden state lands under the model's device map, if any."""
        device = self._head_device()
        if device is None:
            return
        self.v_head = self.v_head.to(device)
        self.is_sequential_parallel = True

    def compute_reward_score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Score with the reward adapter: switch it in, run, read ``score``, switch the policy back.

        Runs under ``torch.no_grad()``; the policy adapter is active again afterwards, even on error.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)``, 1 for real tokens and 0 for padding.
            **kwargs: Passed to the wrapped model's forward.

        Returns:
            The reward head's output at every position, ``(batch, seq, num_labels)`` in the base
                model's dtype (the reward of a sequence is the one at its last real token).

        Raises:
            AdapterError: the model was loaded without a reward adapter.
        """
        if not self.supports_rm_adapter:
            raise AdapterError(
                "this model has no reward adapter",
                hint="load it with reward_adapter=... (a PEFT model is needed)",
            )
        self.pretrained_model.set_adapter(self.rm_adapter_name)
        self.pretrained_model.eval()
        try:
            with torch.no_grad():
                out = self.pretrained_model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    output_hidden_states=True,
                    return_dict=True,
                    **kwargs,
                )
                hidden = out.hidden_states[-1]
                if hidden.device != self.score.weight.device:
                    hidden = hidden.to(self.score.weight.device)
                scores = self.score(hidden.to(self.score.weight.dtype))
        finally:
            self.pretrained_model.set_adapter(self.policy_adapter_name)
            self.pretrained_model.eval()
        return scores

    # ------------------------------------------------------------------------------------------
    def _init_weights(self, **kwargs: Any) -> None:
        """Initialise the head: ``None`` keeps PyTorch's default init, ``"normal"`` draws N(0, range)."""
        initializer_range = kwargs.pop("v_head_initializer_range", 0.2)
        strategy = kwargs.pop("v_head_init_strategy", None)
        if strategy is None:
            self.provenance.head_init, self.provenance.head_std = "random", None
        elif strategy == "normal":
            with torch.no_grad():
                self.v_head.summary.weight.normal_(mean=0.0, std=initializer_range)
                self.v_head.summary.bias.zero_()
            self.provenance.head_init, self.provenance.head_std = "normal", float(initializer_range)
        else:
            raise UsageError(
                f"unknown v_head_init_strategy {strategy!r}", hint="use None (PyTorch default) or 'normal'"
            )

    def _value_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.device != self.v_head.summary.weight.device:
            hidden = hidden.to(self.v_head.summary.weight.device)
        return self.v_head(hidden).squeeze(-1)

    def _outputs(self, output: Any, hidden: torch.Tensor, return_past_key_values: bool) -> tuple[Any, ...]:
        """TRL's forward result: ``(lm_logits, loss, value)`` in fp32 on the head's device, plus the cache."""
        value = self._value_from_hidden(hidden).float()
        lm_logits = output.logits
        if lm_logits.dtype != torch.float32:
            lm_logits = lm_logits.float()
        if self.is_sequential_parallel and lm_logits.device != value.device:
            lm_logits = lm_logits.to(value.device)
        if return_past_key_values:
            return (lm_logits, output.loss, value, self._cache_of(output))
        return (lm_logits, output.loss, value)

    def _cache_kwargs(self, past_key_values: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pass a cache under the name the installed transformers takes (``cache`` from 5.x on).

        Nothing is passed when there is no cache, so newer transformers do not warn on every call.
        """
        if self.is_peft_model and self.pretrained_model.active_peft_config.peft_type == "PREFIX_TUNING":
            return kwargs
        if past_key_values is not None:
            kwargs[_cache_arg_name(self.pretrained_model)] = past_key_values
        return kwargs

    @staticmethod
    def _cache_of(output: Any) -> Any:
        cache = output.get("cache") if hasattr(output, "get") else None
        return cache if cache is not None else getattr(output, "past_key_values", None)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate with the wrapped model (the value head plays no part).

        Args:
            *args: Passed to the wrapped model's ``generate`` (``input_ids`` ``(batch, seq)``...).
            **kwargs: Passed to the wrapped model's ``generate`` (``max_new_tokens``, ``do_sample``...).

        Returns:
            What the wrapped model's ``generate`` returns, by default the ``(batch, seq + new)``
                token ids (for seq2seq, the decoder's ids).
        """
        return self.pretrained_model.generate(*args, **kwargs)
