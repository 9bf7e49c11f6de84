"""Find mislabeled training samples from neural-collapse geometry and training dynamics.

- :mod:`nclab.detect.scores`: per-sample suspicion scores (features: centroid ratio,
  kNN disagreement; dynamics: area under the margin, fit epoch; rank average) and
  :func:`detection_quality` (AUROC, precision at the true noise count);
- :func:`score_run`: the scores for an nclab run directory, written as CSV by
  :meth:`Suspicion.to_csv`;
- :mod:`nclab.detect.evaluate`: injected-noise evaluation next to cleanlab;
- :func:`find_label_issues` / :func:`get_label_quality_scores`: cleanlab-shaped
  entry points (labels first, keyword evidence: ``pred_probs``, ``features``,
  ``margins``), a flagged set by a stated rule (AUM threshold, confident learning).
"""

from nclab.detect.issues import FILTERS, QUALITY_METHODS, confident_joint, find_label_issues, get_label_quality_scores
from nclab.detect.suspicion import SCORES, Suspicion, score_arrays, score_run
from nclab.detect.scores import (
    aum_scores,
    centroid_ratio_scores,
    detection_quality,
    fit_epoch_scores,
    knn_disagreement_scores,
    rank_average,
)

__all__ = [
    "FILTERS",
    "QUALITY_METHODS",
    "confident_joint",
    "find_label_issues",
    "get_label_quality_scores",
    "SCORES",
    "Suspicion",
    "aum_scores",
    "centroid_ratio_scores",
    "detection_quality",
    "fit_epoch_scores",
    "knn_disagreement_scores",
    "rank_average",
    "score_arrays",
    "score_run",
]
