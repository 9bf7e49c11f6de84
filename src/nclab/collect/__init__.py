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
from nclab.collect.rebuild import LoadedRun, load_run, load_user_model

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


# ``nclab.collect(model, data, ...)`` must work whether ``nclab.collect`` resolves to this
# package or to the function: Python binds a subpackage as an attribute of its parent on
# import, which would shadow a function of the same name. So the package itself is callable.
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        """Same as :func:`nclab.collect.collect`."""
        return collect(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
