"""Generator-aware parameter initialisation.

Models are built on the ``meta`` device (no storage, no random draws) and then
materialised and initialised here from an explicit ``torch.Generator``. The
global RNG is never read or advanced, so building a model cannot shift any other
random stream of a run, and the same generator state always gives the same
parameters.

The schemes reproduce PyTorch's own defaults so results match the usual
``nn.Linear`` / ``nn.Conv2d`` behaviour:

- Linear / Conv weight: ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-b, b) with
  ``b = 1 / sqrt(fan_in)``;
- Linear / Conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in));
- BatchNorm / LayerNorm: weight 1, bias 0, running mean 0, running variance 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _init_linear_like(module: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _init_norm(module: nn.Module, generator: torch.Generator) -> None:
    if getattr(module, "weight", None) is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.reset_running_stats()


_INITS: dict[type, Callable[[nn.Module, torch.Generator], None]] = {
    nn.Linear: _init_linear_like,
    nn.Conv2d: _init_linear_like,
    **{cls: _init_norm for cls in _NORMS},
}


def init_parameters(model: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """(Re-)initialise every parameter and buffer of ``model`` in place from ``generator``.

    Modules are visited in ``model.modules()`` order (registration order), so the
    draws are a deterministic function of the architecture and the generator state.
    A module type with its own parameters that this function does not know is an
    error rather than a silently uninitialised tensor.
    """
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        fn = next((f for cls, f in _INITS.items() if type(module) is cls), None)
        if fn is None and own:
            raise TypeError(
                f"init_parameters does not know how to initialise {type(module).__name__}; "
                f"known: {', '.join(c.__name__ for c in _INITS)}"
            )
        if fn is not None:
            fn(module, generator)
    return model


def materialize(factory: Callable[[], nn.Module], *, generator: torch.Generator) -> nn.Module:
    """Build ``factory()`` on the meta device, allocate it on CPU, initialise from ``generator``.

    Building on ``meta`` means the constructors' own default initialisation (which
    would draw from the global RNG) never runs.
    """
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        init_parameters(model, generator=generator)
    return model
