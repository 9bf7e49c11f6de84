"""NC4: agreement of the classifier with the nearest-class-centre (NCC) rule.

``mismatch = (1/n) Σ_i 1[argmax_c (W h_i + b)_c ≠ argmin_c ‖h_i − μ_c‖]``, with the
class means μ_c of the *given* labels; the "no bias" variant drops b. The NCC
rule needs the final means, so this is accumulated in the second pass; the
distances come from the accumulator's single GEMM on the within-class deviations
(``NCAccumulator._pass2_tables``).
"""

from __future__ import annotations

import torch


class NCCState:
    def __init__(self) -> None:
        self.n = 0
        self.mismatch_bias: int | None = None
        self.mismatch_nobias: int | None = None

    def update(
        self, ncc_pred: torch.Tensor, pred_bias: torch.Tensor | None, pred_nobias: torch.Tensor | None
    ) -> None:
        self.n += int(ncc_pred.shape[0])
        if pred_bias is not None:
            self.mismatch_bias = (self.mismatch_bias or 0) + int((pred_bias != ncc_pred).sum())
        if pred_nobias is not None:
            self.mismatch_nobias = (self.mismatch_nobias or 0) + int((pred_nobias != ncc_pred).sum())

    def merge(self, other: "NCCState") -> None:
        self.n += other.n
        for name in ("mismatch_bias", "mismatch_nobias"):
            a, b = getattr(self, name), getattr(other, name)
            setattr(self, name, None if a is None and b is None else (a or 0) + (b or 0))

    def rates(self) -> tuple[float | None, float | None]:
        if self.n == 0:
            return None, None
        f = lambda m: None if m is None else m / self.n  # noqa: E731
        return f(self.mismatch_bias), f(self.mismatch_nobias)
