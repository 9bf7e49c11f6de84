"""The paper's MLP (Memorization-Dilation, ICLR 2023, official code)."""

from __future__ import annotations

import math

from torch import nn

from nclab.models.base import FeatureModel

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``gelu``, ``tanh``, ``leaky_relu``, ``identity``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(FeatureModel):
    """Flatten, then ``depth`` blocks ``Linear -> BatchNorm1d (optional) -> activation``.

    Blocks 1..depth-1 have ``width`` units; the last block maps to ``feature_dim``
    units (default: ``num_classes``), which are the penultimate features ``h``.
    Then ``classifier = Linear(feature_dim, num_classes)`` gives logits ``W h + b``.
    With ReLU the features are non-negative, and for a binary task they are 2-D,
    as in the paper's figures. ``depth = 1`` is a single block from the input to
    the features. ``classifier_bias=False`` drops ``b`` (logits ``W h``), the setting in which
    a dead class is no minimum of the positive unconstrained-features model.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int = 3,
        width: int = 256,
        feature_dim: int | None = None,
        batch_norm: bool = True,
        activation: str = "relu",
        classifier_bias: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"mlp depth must be >= 1; got {depth}")
        if width < 1:
            raise ValueError(f"mlp width must be >= 1; got {width}")
        feature_dim = num_classes if feature_dim is None else int(feature_dim)
        if feature_dim < 1:
            raise ValueError(f"mlp feature_dim must be >= 1; got {feature_dim}")
        in_dim = math.prod(input_shape)
        dims = [in_dim] + [width] * (depth - 1) + [feature_dim]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(make_activation(activation))
        self.body = nn.Sequential(*layers)
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes, bias=classifier_bias)
