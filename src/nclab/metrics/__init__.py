"""Neural-collapse metrics under label noise: exact, streaming, float64, CPU or GPU.

- ``NCAccumulator``: stateful (``update`` / ``start_second_pass`` / ``compute`` /
  ``reset`` / ``merge``), torchmetrics-style.
- ``evaluate_stream``: both passes over a re-iterable stream of batches.
- ``nc_metrics``: the functional twin for in-memory arrays.
- ``CONVENTIONS``: the named published conventions; ``METRIC_KEYS``: the key set.
"""

from nclab.metrics.accumulator import NCAccumulator
from nclab.metrics.conventions import CONVENTIONS, DEFAULT_CONVENTION, Convention, get_convention
from nclab.metrics.functional import evaluate_stream, nc_metrics
from nclab.metrics.result import METRIC_KEYS, NCResult

__all__ = [
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "METRIC_KEYS",
    "Convention",
    "NCAccumulator",
    "NCResult",
    "evaluate_stream",
    "get_convention",
    "nc_metrics",
]
