"""A small convolutional network for quick image experiments."""

from __future__ import annotations

from torch import nn

from nclab.models.base import FeatureModel

from nclab.models.mlp import make_activation


class SmallCNN(FeatureModel):
    """Two conv stages and a linear feature layer.

    ``[Conv3x3(c) -> BN -> act -> Conv3x3(c) -> BN -> act -> MaxPool2]`` with
    ``c = width`` then ``c = 2 * width``, global average pooling, then
    ``Linear(2 * width, feature_dim) -> act`` gives the penultimate features and
    ``classifier = Linear(feature_dim, num_classes)`` the logits.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 32,
        feature_dim: int = 64,
        batch_norm: bool = True,
        classifier_bias: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W); got input_shape {tuple(input_shape)}")
        if width < 1 or feature_dim < 1:
            raise ValueError(f"cnn width and feature_dim must be >= 1; got {width}, {feature_dim}")
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c_out in (width, 2 * width):
            for _ in range(2):
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(make_activation(activation))
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, feature_dim), make_activation(activation)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes, bias=classifier_bias)
