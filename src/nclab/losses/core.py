"""Loss functions: formulas, validation and a name registry."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (n, C); got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits; got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must be an integer tensor; got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _check_alpha(alpha: float, *, name: str = "alpha") -> float:
    alpha = float(alpha)
    if not (0.0 <= alpha < 1.0):
        raise ValueError(f"{name} must lie in [0, 1); got {alpha}")
    return alpha


def soft_targets(labels: Tensor, num_classes: int, *, alpha: float = 0.0, dtype=None) -> Tensor:
    """Label-smoothed targets ``(1 - alpha) e_y + alpha / C`` (shape ``(n, C)``)."""
    alpha = _check_alpha(alpha)
    t = F.one_hot(labels.long(), num_classes).to(dtype or torch.get_default_dtype())
    return t * (1.0 - alpha) + alpha / num_classes


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy ``L = mean_i [-log softmax(z_i)_{y_i}]``."""
    _check(logits, labels)
    return F.cross_entropy(logits, labels.long())


def label_smoothing(logits: Tensor, labels: Tensor, *, alpha: float) -> Tensor:
    """Label smoothing LS(alpha) (Szegedy et al. 2016; PyTorch's ``label_smoothing``).

    ``L = mean_i [-sum_k t_ik log softmax(z_i)_k]`` with target
    ``t_i = (1 - alpha) e_{y_i} + alpha / C``. Identical to
    ``F.cross_entropy(logits, y, label_smoothing=alpha)``; ``alpha = 0`` is CE.
    """
    _check(logits, labels)
    alpha = _check_alpha(alpha)
    t = soft_targets(labels, logits.shape[1], alpha=alpha, dtype=logits.dtype)
    return -(t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def label_relaxation(logits: Tensor, labels: Tensor, *, alpha: float) -> Tensor:
    """Label relaxation (Lienen & Hüllermeier, AAAI 2021), as in the official M-D code.

    With p = softmax(z): if ``p_y > 1 - alpha`` the loss is 0 (p already lies in the
    credal set). Otherwise it is ``KL(p^r || p)`` where the projection ``p^r`` has
    ``p^r_y = 1 - alpha`` and ``p^r_k = alpha * p_k / sum_{j != y} p_j`` for ``k != y``.
    As in the official code, gradients flow through ``p^r`` too (it is not detached).
    """
    _check(logits, labels)
    alpha = _check_alpha(alpha)
    if alpha == 0.0:
        return cross_entropy(logits, labels)
    p = F.softmax(logits, dim=1)
    logp = F.log_softmax(logits, dim=1)
    onehot = F.one_hot(labels.long(), logits.shape[1]).to(logits.dtype)
    rest = ((1.0 - onehot) * p).sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    p_r = torch.where(onehot > 0, torch.full_like(p, 1.0 - alpha), alpha * p / rest)
    # xlogy keeps 0 * log 0 = 0 where a class probability underflows.
    div = (torch.xlogy(p_r, p_r) - p_r * logp).sum(dim=1)
    py = (p * onehot).sum(dim=1)
    return torch.where(py > 1.0 - alpha, torch.zeros_like(div), div).mean()


def mse_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error on one-hot targets: ``L = mean_i ||z_i - e_{y_i}||^2`` (sum over classes).

    Summing over classes (not averaging) matches the MSE unconstrained-features
    literature (Han et al. 2022), where the loss per sample is ``||Wh + b - y||^2 / 2``
    up to the constant factor; we do not halve.
    """
    _check(logits, labels)
    t = F.one_hot(labels.long(), logits.shape[1]).to(logits.dtype)
    return ((logits - t) ** 2).sum(dim=1).mean()


def focal_loss(logits: Tensor, labels: Tensor, *, gamma: float) -> Tensor:
    """Focal loss (Lin et al. 2017): ``L = mean_i [-(1 - p_{i,y})^gamma log p_{i,y}]``; gamma=0 is CE."""
    _check(logits, labels)
    gamma = float(gamma)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0; got {gamma}")
    logp = F.log_softmax(logits, dim=1).gather(1, labels.long()[:, None]).squeeze(1)
    return (-((1.0 - logp.exp()) ** gamma) * logp).mean()


class CrossEntropy(nn.Module):
    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(logits, labels)


class LabelSmoothing(nn.Module):
    def __init__(self, *, alpha: float = 0.1):
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return label_smoothing(logits, labels, alpha=self.alpha)


class LabelRelaxation(nn.Module):
    def __init__(self, *, alpha: float = 0.1):
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return label_relaxation(logits, labels, alpha=self.alpha)


class MSELoss(nn.Module):
    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return mse_loss(logits, labels)


class FocalLoss(nn.Module):
    def __init__(self, *, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0; got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss(logits, labels, gamma=self.gamma)


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: the module class and the names of the parameters it accepts."""

    cls: Callable[..., nn.Module]
    params: tuple[str, ...]
    summary: str


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(CrossEntropy, (), "cross-entropy"),
    "ls": LossSpec(LabelSmoothing, ("alpha",), "label smoothing, target (1-alpha) e_y + alpha/C"),
    "lr": LossSpec(LabelRelaxation, ("alpha",), "label relaxation (Lienen & Huellermeier 2021)"),
    "mse": LossSpec(MSELoss, (), "squared error on one-hot targets"),
    "focal": LossSpec(FocalLoss, ("gamma",), "focal loss (Lin et al. 2017)"),
}


def get_loss(name: str, **params: float) -> nn.Module:
    """Build a loss by registry name (``ce``, ``ls``, ``lr``, ``mse``, ``focal``).

    Parameters not used by the loss are an error, so a typo (``alpa=0.1``) never
    silently trains with the default.
    """
    key = name.lower().replace("_", "-")
    aliases = {"cross-entropy": "ce", "label-smoothing": "ls", "label-relaxation": "lr"}
    key = aliases.get(key, key)
    if key not in LOSSES:
        hint = difflib.get_close_matches(key, list(LOSSES) + list(aliases), n=1)
        msg = f"unknown loss {name!r}; valid: {', '.join(LOSSES)}"
        raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    spec = LOSSES[key]
    extra = set(params) - set(spec.params)
    if extra:
        raise ValueError(
            f"loss {key!r} takes parameters {list(spec.params) or 'none'}; got unexpected {sorted(extra)}"
        )
    return spec.cls(**params)
