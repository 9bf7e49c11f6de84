"""Preprocessing presets: ``native`` and ``paper``. Whole-array tensor ops, no per-sample Python.

``native`` — images scaled to [0, 1] (``/255``, ``/16`` for sklearn digits), kept in their own
shape (C x H x W), then standardized per channel with the dataset's mean/std below (computed
on the full training set; digits: on all 1797 images).

``paper`` — the official M-D code's input pipeline: every image to 3 x 32 x 32 (grey images
replicated to 3 channels, images not 32 x 32 resized with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``),
then normalized with the code's constants: colour data (0.4914, 0.4822, 0.4465) /
(0.2023, 0.1994, 0.2010), grey data 0.1307 / 0.3081 on every channel.
Differences from the official torchvision pipeline (PIL ``Resize`` on uint8, then
``ToTensor``): we resize in float32 after scaling, so values differ by at most the uint8
rounding PIL applies (≤ 0.5/255 before normalization); for the up-sizing used here
(8 → 32, 28 → 32) PIL's bilinear filter and ``interpolate`` agree otherwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PRESETS = ("native", "paper")

# per-dataset [0,1]-scale statistics for the native preset (train split, population std)
NATIVE_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
PAPER_COLOUR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
PAPER_GREY = ((0.1307,), (0.3081,))
PAPER_SIZE = 32


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, inplace: bool = False) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``inplace`` saves two full-size temporaries on big datasets."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s) if inplace else (x - m) / s


def to_float(x: "np.ndarray", *, scale: float) -> torch.Tensor:
    """uint8/float numpy array (n, C, H, W) → new float32 tensor in [0, 1] (divided by ``scale``)."""
    return torch.from_numpy(np.asarray(x).astype(np.float32)).div_(scale)


def native(x01: torch.Tensor, *, dataset: str, inplace: bool = False) -> tuple[torch.Tensor, dict]:
    """Standardize [0,1] images per channel with :data:`NATIVE_STATS` (shape unchanged)."""
    mean, std = NATIVE_STATS[dataset]
    return _normalize(x01, mean, std, inplace=inplace), {"preset": "native", "mean": list(mean), "std": list(std), "resize": None}


def paper(x01: torch.Tensor, *, normalize: bool = True) -> tuple[torch.Tensor, dict]:
    """To 3 x 32 x 32 (replicate grey, bilinear resize) and normalize with the official constants."""
    n, c, h, w = x01.shape
    grey = c == 1
    if c not in (1, 3):
        raise ValueError(f"paper preprocessing needs 1- or 3-channel images; got {c} channels")
    resize = None
    x = x01
    if (h, w) != (PAPER_SIZE, PAPER_SIZE):
        # resize before replicating channels: 3x less work, same result
        x = F.interpolate(x, size=(PAPER_SIZE, PAPER_SIZE), mode="bilinear", align_corners=False, antialias=False)
        resize = {"from": [h, w], "to": [PAPER_SIZE, PAPER_SIZE], "mode": "bilinear", "align_corners": False, "antialias": False}
    mean, std = PAPER_GREY if grey else PAPER_COLOUR
    info: dict = {"preset": "paper", "resize": resize, "grey_to_rgb": grey, "mean": None, "std": None}
    if normalize:
        # grey: one constant for all three channels, so normalize before replicating
        x = _normalize(x, mean, std, inplace=x is not x01)
        info.update(mean=list(mean) * (3 if grey else 1), std=list(std) * (3 if grey else 1))
    if grey:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(), info
