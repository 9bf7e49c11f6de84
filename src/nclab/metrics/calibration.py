"""Accuracy and expected calibration error from streamed logits.

ECE (Guo et al. 2017) with B equal-width confidence bins on ``max softmax``:
``ECE = Σ_b (n_b / n) · |acc_b − conf_b|``. A confidence of exactly 1 goes to the
last bin; bins are right-closed ``((b−1)/B, b/B]`` with 0 in the first bin.
"""

from __future__ import annotations

import torch


class CalibrationState:
    def __init__(self, *, bins: int = 15) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1; got {bins}")
        self.bins = bins
        self.count = torch.zeros(bins, dtype=torch.float64)
        self.conf = torch.zeros(bins, dtype=torch.float64)
        self.correct = torch.zeros(bins, dtype=torch.float64)
        self.correct_clean = 0.0
        self.n_clean = 0

    def update(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        y_clean: torch.Tensor | None,
        *,
        top: torch.Tensor | None = None,
        pred: torch.Tensor | None = None,
    ) -> None:
        """Fold in a batch of logits; ``top``/``pred`` (the row maxima and their first index,
        ``logits.max(dim=1)``) may be passed when the caller already has them."""
        if top is None or pred is None:
            top, pred = logits.max(dim=1)
        # max softmax probability = 1 / Σ_c exp(z_c − max z) (every term ≤ 1, the largest
        # exactly 1): row reductions over short rows (C ≈ 10) are slow in torch, and this
        # needs one where logsumexp needs three and softmax more
        conf = (logits - top[:, None]).exp_().sum(dim=1).reciprocal_()
        idx = (torch.ceil(conf * self.bins).long() - 1).clamp(0, self.bins - 1)
        ok = (pred == y).to(torch.float64)
        dev = self.count.device
        if dev != logits.device:
            self.count, self.conf, self.correct = (t.to(logits.device) for t in (self.count, self.conf, self.correct))
        self.count.index_add_(0, idx, torch.ones_like(conf))
        self.conf.index_add_(0, idx, conf)
        self.correct.index_add_(0, idx, ok)
        if y_clean is not None:
            self.correct_clean += float((pred == y_clean).sum())
            self.n_clean += int(y.shape[0])

    def merge(self, other: "CalibrationState") -> None:
        self.count += other.count.to(self.count.device)
        self.conf += other.conf.to(self.count.device)
        self.correct += other.correct.to(self.count.device)
        self.correct_clean += other.correct_clean
        self.n_clean += other.n_clean

    def accuracy(self) -> float:
        return float(self.correct.sum() / self.count.sum())

    def accuracy_clean(self) -> float | None:
        return self.correct_clean / self.n_clean if self.n_clean else None

    def ece(self) -> float:
        n = self.count.sum()
        nz = self.count > 0
        gap = (self.correct[nz] - self.conf[nz]).abs()  # = n_b |acc_b - conf_b|
        return float(gap.sum() / n)
