"""Measure neural collapse on any PyTorch classifier, streamed over its data.

- :func:`collect`: metrics at the penultimate layer (the input of the final
  ``nn.Linear``) plus logits, via :func:`nclab.metrics.evaluate_stream`;
- :func:`collect_layers`: NC1 and the ETF / orthogonal-frame errors at several
  named layers from the same forward passes (collapse through depth).
"""

from nclab.collect.core import (
    LAYER_KEYS,
    collect,
    collect_layers,
    default_layers,
    features_of,
    find_final_linear,
    layer_summary,
)
from nclab.collect.runs import LoadedRun, load_run, load_user_model

__all__ = [
    "LAYER_KEYS",
    "LoadedRun",
    "collect",
    "collect_layers",
    "default_layers",
    "features_of",
    "find_final_linear",
    "layer_summary",
    "load_run",
    "load_user_model",
]
