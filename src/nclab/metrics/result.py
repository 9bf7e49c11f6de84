"""The result object and the documented key set (the JSON contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# key -> one-line meaning; the same keys `nclab metrics --json` prints and the
# trainer writes (prefixed "train." / "test.").
METRIC_KEYS: dict[str, str] = {
    "n_samples": "number of samples seen",
    "num_classes": "C",
    "feature_dim": "d",
    "nc1": "tr(Σ_W Σ_B⁺)/C through the thin SVD of the centred means, at their numerical rank (≤ C−1)",
    "nc1_pinv": "tr(Σ_W pinv(Σ_B))/C, eigenvalue cutoff λ_max·max(d,C)·eps of the input dtype",
    "nc1_rank": "numerical rank of Σ_B used by nc1 (decided at the input's precision)",
    "nc1_trace_ratio": "tr Σ_W / tr Σ_B",
    "nc1_logits": "nc1 computed on the logits instead of the features (rank at the logits' precision)",
    "cdnv": "class-distance normalized variance, mean over class pairs (σ_c² ÷ (n_c − cdnv_ddof))",
    "nc2_equinorm_means": "std/mean of ‖μ_c − μ_G‖",
    "nc2_equinorm_weights": "std/mean of ‖w_c‖",
    "nc2_equiangular_means": "mean_{c≠c'} |cos(μ̃_c, μ̃_c') + 1/(C−1)|",
    "nc2_equiangular_weights": "mean_{c≠c'} |cos(w_c, w_c') + 1/(C−1)|",
    "nc2_cos_std_means": "std of the pairwise cosines of the centred means",
    "nc2_cos_std_weights": "std of the pairwise cosines of the classifier rows",
    "nc2_etf_error_means": "‖G/‖G‖_F − ETF‖_F, G = Gram of the centred means (None for C = 2)",
    "nc2_etf_error_weights": "‖G/‖G‖_F − ETF‖_F, G = W Wᵀ",
    "nc2_orthogonal_error_means": "‖G/‖G‖_F − I/√C‖_F, G = Gram of the uncentred means",
    "nc2_orthogonal_error_weights": "‖G/‖G‖_F − I/√C‖_F, G = W Wᵀ",
    "nc3_papyan": "‖Wᵀ/‖W‖_F − M̃/‖M̃‖_F‖_F²",
    "nc3_zhu": "‖W M̃/‖W M̃‖_F − ETF‖_F",
    "nc4_ncc_mismatch": "NCC-vs-classifier mismatch rate (bias per convention)",
    "nc4_ncc_mismatch_bias": "mismatch with argmax(W h + b)",
    "nc4_ncc_mismatch_nobias": "mismatch with argmax(W h)",
    "nc4_bias_norm": "‖W μ_G ± b‖ (sign per convention)",
    "accuracy": "accuracy of argmax logits against the given labels",
    "accuracy_clean": "accuracy against the clean labels",
    "ece": "expected calibration error, 15 equal-width bins",
    "realized_noise_rate": "fraction of samples whose given label ≠ clean label",
    "memorization": "mean distance of mislabeled samples to their true class's clean centroid",
    "memorization_std": "std of those distances",
    "memorization_normalized": "memorization / mean distance between clean centroids",
    "dilation": "mean distance of clean samples to their clean centroid",
    "dilation_std": "std of those distances pooled over all classes (ddof per convention)",
    "dilation_std_official": "mean over classes of the per-class std (ddof 0) of those distances (official code)",
    "dilation_normalized": "dilation / mean distance between clean centroids",
    "clean_centroid_distance": "mean distance between clean centroids",
    "noisy_centroid_projection": "mean projection t of mislabeled samples (0 true clean centroid, 1 given one)",
    "memorization_per_class": "memorization by true class (list)",
    "dilation_per_class": "dilation by class (list)",
    "noisy_centroid_projection_pairs": "projection t by (true, given) class pair (C×C list)",
    "corruption_biases": "official: ⟨m̄_c − μ_c, μ_k − μ_c⟩/‖μ_k − μ_c‖, m̄_c = mean of mislabeled given c (C×C list)",
    "corruption_bias_mean": "mean of the defined corruption_biases entries",
}


@dataclass(frozen=True)
class NCResult:
    """Metric values (``values``), optional per-sample arrays, and diagnostics (``info``)."""

    values: dict[str, Any]
    per_sample: dict[str, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict: every metric key plus ``convention``."""
        out = dict(self.values)
        out["convention"] = self.info.get("convention")
        return out

    def scalars(self) -> dict[str, float]:
        """Only the scalar metrics (drops lists and None) — for tables and logs."""
        return {k: v for k, v in self.values.items() if isinstance(v, (int, float)) and v is not None}
