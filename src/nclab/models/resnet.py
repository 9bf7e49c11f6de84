"""CIFAR-style ResNet-18 in plain PyTorch (no torchvision)."""

from __future__ import annotations

from torch import Tensor, nn

from nclab.models.base import FeatureModel


class BasicBlock(nn.Module):
    """``x -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN (+ shortcut) -> ReLU`` (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # 1x1 projection when the shape changes (option B of the ResNet paper).
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(FeatureModel):
    """ResNet-18 for 32x32 inputs: 3x3 stem (stride 1, no max-pool), 4 stages of 2 blocks.

    Stage widths are ``round(64 k), round(128 k), round(256 k), round(512 k)`` for
    ``width_multiplier = k``; the stages after the first halve the resolution.
    Global average pooling gives the penultimate features (dimension
    ``round(512 k)``), and ``classifier`` maps them to logits.
    """

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, width_multiplier: float = 1.0,
                 classifier_bias: bool = True):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"resnet18 needs image inputs (C, H, W); got input_shape {tuple(input_shape)}")
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0; got {width_multiplier}")
        widths = [max(1, round(w * width_multiplier)) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, w, stride), BasicBlock(w, w, 1)]
            c_in = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c_in
        self.classifier = nn.Linear(c_in, num_classes, bias=classifier_bias)

    def features(self, x: Tensor) -> Tensor:
        """The pooled output of the last stage."""
        return self.pool(self.stages(self.stem(x)))
