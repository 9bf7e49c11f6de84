"""Classification losses on logits and integer labels.

Every loss is a plain ``torch.nn.Module`` with a functional twin; all take
``logits`` of shape ``(n, C)`` (any float dtype, float64 included, so the theory
solvers can use them) and integer ``labels`` of shape ``(n,)``, and return the
*mean* over samples. ``get_loss(name, **params)`` is the registry.
"""

from nclab.losses.core import (
    LOSSES,
    CrossEntropy,
    FocalLoss,
    LabelRelaxation,
    LabelSmoothing,
    LossSpec,
    MSELoss,
    cross_entropy,
    focal_loss,
    get_loss,
    label_relaxation,
    label_smoothing,
    mse_loss,
    soft_targets,
)

__all__ = [
    "LOSSES",
    "CrossEntropy",
    "FocalLoss",
    "LabelRelaxation",
    "LabelSmoothing",
    "LossSpec",
    "MSELoss",
    "cross_entropy",
    "focal_loss",
    "get_loss",
    "label_relaxation",
    "label_smoothing",
    "mse_loss",
    "soft_targets",
]
