"""Model registry: ``build_model(name, ...)``."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nclab.models.cnn import SmallCNN
from nclab.models.init import materialize
from nclab.models.mlp import MLP
from nclab.models.resnet import ResNet18
from nclab.seeding import torch_generator


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the class and a one-line summary."""

    cls: Callable[..., nn.Module]
    summary: str

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the model accepts besides ``input_shape`` and ``num_classes``."""
        params = inspect.signature(self.cls.__init__).parameters
        return tuple(p for p in params if p not in ("self", "input_shape", "num_classes"))


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(MLP, "the paper's MLP: depth x (Linear -> BN -> act), features of dim num_classes"),
    "resnet18": ModelSpec(ResNet18, "CIFAR-style ResNet-18 (3x3 stem, no max-pool) with a width multiplier"),
    "cnn": ModelSpec(SmallCNN, "small CNN: two conv stages, global pooling, a linear feature layer"),
}


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...] | list[int],
    num_classes: int,
    generator: torch.Generator | None = None,
    seed: int = 0,
    **options,
) -> nn.Module:
    """Build a registered model with parameters drawn from an explicit generator.

    Parameters
    ----------
    name : ``"mlp"``, ``"resnet18"`` or ``"cnn"`` (see ``MODELS``).
    input_shape : shape of one input sample, e.g. ``(3, 32, 32)`` or ``(1, 8, 8)``.
    num_classes : number of logits.
    generator : CPU ``torch.Generator`` for the initial parameters; when omitted,
        the ``"init"`` stream of ``seed`` is used. The global RNG is never touched.
    **options : model options (e.g. ``depth``, ``width``); an option the model
        does not accept is an error that lists the valid ones.

    Every model has ``forward(x) -> logits``, ``forward_features(x) -> (logits,
    features)`` where the features are the input of the final linear layer, and
    ``classifier: nn.Linear``. The model is returned on CPU in train mode.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        hint = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1, cutoff=0.4)
        msg = f"unknown model {name!r}; valid: {', '.join(MODELS)}"
        raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    spec = MODELS[key]
    extra = sorted(set(options) - set(spec.options))
    if extra:
        raise ValueError(f"model {key!r} does not take {extra}; valid options: {', '.join(spec.options)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes; got {input_shape}")
    if generator is None:
        generator = torch_generator(seed, "init")
    model = materialize(lambda: spec.cls(input_shape=shape, num_classes=int(num_classes), **options), generator=generator)
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise TypeError(f"model {key!r} must expose `classifier: nn.Linear`")
    return model.train()
