"""Where a model keeps its logits and its classifier: the conventions for models nclab did not build."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["find_final_linear", "linear_names", "logits_of"]


def logits_of(out: Any) -> Tensor:
    """The logits in a model's output: logits, ``(logits, ...)`` or ``{"logits": ...}`` (2-D)."""
    if isinstance(out, Tensor):
        z = out
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        z = out[0]
    elif isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        z = out["logits"]
    else:
        raise TypeError(
            f"the model returned {type(out).__name__}; expected logits (a tensor), a tuple whose first "
            "element is the logits, or a dict with key 'logits'"
        )
    if z.ndim != 2:
        raise ValueError(f"the model's logits must be 2-D (batch × classes); got shape {tuple(z.shape)}")
    return z


def find_final_linear(model: nn.Module, num_logits: int, *, layer: str | None = None) -> tuple[str, nn.Linear]:
    """The classifier layer: ``layer`` by name, else the last ``nn.Linear`` in
    ``model.named_modules()`` order whose ``out_features == num_logits``."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ValueError(f"model has no module named {layer!r}; linear layers: {linear_names(model) or 'none'}")
        mod = modules[layer]
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"layer {layer!r} is a {type(mod).__name__}, not nn.Linear")
        return layer, mod
    found = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear) and m.out_features == num_logits]
    if not found:
        raise ValueError(
            f"no nn.Linear with out_features == {num_logits} (the number of logits) in the model; "
            f"name the classifier with layer=... (linear layers: {linear_names(model) or 'none'})"
        )
    return found[-1]


def linear_names(model: nn.Module) -> str:
    """The model's ``nn.Linear`` layers as ``name (in->out)``, for error messages."""
    return ", ".join(f"{n} ({m.in_features}->{m.out_features})" for n, m in model.named_modules() if isinstance(m, nn.Linear))
