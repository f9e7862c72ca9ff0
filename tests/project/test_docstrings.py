"""The public API's docstrings: Google style, every argument under ``Args:``, a ``Returns:`` section
when something is returned, and a shape such as ``(batch, seq)`` wherever a tensor goes in or out.

The API reference (docs/api.md, rendered by mkdocstrings) is built from these docstrings, so what
this test holds is what the reference shows.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vhctl

SECTION = re.compile(r"^(\w[\w ]*):\s*$")
ENTRY = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:(?:\s|$)")
SHAPE = re.compile(r"\([\w\s+\-*]+,[\w\s+\-*,]*\)")  # (batch, seq), (1,), (batch, seq + new)

# The library entry points the docs name besides vhctl.__all__ (module, name).
ENTRY_POINTS = [
    ("vhctl.modeling", "load_checkpoint"),
    ("vhctl.scoring", "Scorer"),
    ("vhctl.ops.export", "export_checkpoint"),
    ("vhctl.ops.push", "push_checkpoint"),
    ("vhctl.integrations.trl", "trl_reward"),
    ("vhctl.checkpoint.validate", "validate_checkpoint"),
]


def sections(doc: str) -> dict[str, list[str]]:
    """A cleaned Google-style docstring's sections: header -> the lines under it (still indented)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in inspect.cleandoc(doc).splitlines():
        match = SECTION.match(line)
        if match:
            current = found.setdefault(match.group(1), [])
        elif line and not line[0].isspace():
            current = None  # back in the free text
        elif current is not None:
            current.append(line)
    return found


def entries(lines: list[str]) -> dict[str, str]:
    """The entries of an ``Args:`` section: name (``*args`` and ``**kwargs`` kept) -> its whole text."""
    body = [line for line in lines if line.strip()]
    if not body:
        return {}
    indent = min(len(line) - len(line.lstrip()) for line in body)
    out: dict[str, str] = {}
    name = None
    for line in body:
        text = line[indent:]
        match = ENTRY.match(text) if not text[0].isspace() else None
        if match:
            name = match.group(1)
            out[name] = text[match.end() :]
        elif name is not None:
            out[name] += " " + text.strip()
    return out


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def problems(func: Callable[..., Any], *, doc: str | None = None, returns: bool = True) -> list[str]:
    """What ``func``'s docstring (or ``doc``, for a class documenting its constructor) lacks."""
    doc = doc if doc is not None else inspect.getdoc(func)
    if not doc:
        return ["no docstring"]
    found = sections(doc)
    out = []
    params = [p for name, p in inspect.signature(func).parameters.items() if name not in ("self", "cls")]
    documented = entries(found.get("Args", []))
    if params and "Args" not in found:
        out.append("takes arguments but has no 'Args:' section")
    for param in params:
        stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(
            param.kind, ""
        )
        name = stars + param.name
        if name not in documented:
            out.append(f"argument {name!r} is not under 'Args:'")
        elif "Tensor" in _annotation(param.annotation) and not SHAPE.search(documented[name]):
            out.append(f"tensor argument {name!r} has no shape such as (batch, seq)")
    for name in documented:
        if name.lstrip("*") not in {p.name for p in params}:
            out.append(f"'Args:' names {name!r}, which the signature does not have")
    result = inspect.signature(func).return_annotation
    if returns and result not in (None, "None"):
        if "Returns" not in found:
            out.append(f"returns {_annotation(result)} but has no 'Returns:' section")
        elif "Tensor" in _annotation(result) and not SHAPE.search(" ".join(found["Returns"])):
            out.append("returns a tensor but 'Returns:' gives no shape such as (batch, seq)")
    return out


def public_callables() -> Iterator[tuple[str, Callable[..., Any], str | None, bool]]:
    """(label, callable, docstring to read, whether to want Returns) for vhctl.__all__ and the methods
    vhctl itself defines on its public classes (nn.Module's own methods are torch's business)."""
    for name in vhctl.__all__:
        obj = getattr(vhctl, name)
        if not callable(obj):
            continue
        if not inspect.isclass(obj):
            yield f"vhctl.{name}", obj, None, True
            continue
        yield f"vhctl.{name} (constructor)", obj.__init__, inspect.getdoc(obj), False
        for klass in obj.__mro__:
            if not klass.__module__.startswith("vhctl."):
                continue
            for attr, raw in vars(klass).items():
                if (
                    attr.startswith("_")
                    or not isinstance(raw, classmethod | staticmethod)
                    and not inspect.isfunction(raw)
                ):
                    continue
                if (
                    klass is obj or klass.__name__ not in vhctl.__all__
                ):  # inherited: reported once, on its class
                    yield f"vhctl.{klass.__name__}.{attr}", getattr(obj, attr), None, True


def test_public_api_docstrings_have_args_returns_and_shapes() -> None:
    report = {label: found for label, func, doc, returns in public_callables()
              if (found := problems(func, doc=doc, returns=returns))}  # fmt: skip
    assert not report, "\n".join(f"{label}: {'; '.join(found)}" for label, found in report.items())


def test_the_methods_trainers_call_are_checked() -> None:
    """The walk over the classes reaches the methods the docs promise (not just the classes)."""
    labels = {label for label, *_ in public_callables()}
    wrapper = "vhctl.PreTrainedModelWrapper."
    for method in ("from_pretrained", "save_pretrained", "push_to_hub", "state_dict", "post_init",
                   "compute_reward_score", "add_and_load_reward_modeling_adapter", "generate"):  # fmt: skip
        assert wrapper + method in labels
    for cls in ("ValueHead", "AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead"):
        assert f"vhctl.{cls}.forward" in labels
    assert "vhctl.create_reference_model" in labels


@pytest.mark.parametrize(("module", "name"), ENTRY_POINTS)
def test_library_entry_points_have_args_and_returns(module: str, name: str) -> None:
    import importlib

    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):
        assert problems(obj.__init__, doc=inspect.getdoc(obj), returns=False) == []
    else:
        assert problems(obj) == []


def _bad(model: Any, input_ids: Any, **kwargs: Any) -> Any:
    """Does things.

    Args:
        model: the model.
        input_ids: token ids.
        labels: not an argument.
    """


def _tensor_out(x: int) -> torch.Tensor:  # noqa: F821 - a string annotation, never evaluated
    """Does things.

    Args:
        x: a number.

    Returns:
        A tensor.
    """


def test_the_checker_catches_what_it_is_for() -> None:
    """The checker fails a docstring that misses an argument, names a stray one, or has no Returns;
    and a tensor that is given no shape."""
    found = problems(_bad)
    assert "argument '**kwargs' is not under 'Args:'" in found
    assert "'Args:' names 'labels', which the signature does not have" in found
    assert "returns Any but has no 'Returns:' section" in found
    assert problems(_tensor_out) == ["returns a tensor but 'Returns:' gives no shape such as (batch, seq)"]
    assert problems(lambda: None) == ["no docstring"]
