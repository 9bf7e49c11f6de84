"""nclab: neural collapse under label noise.

Metrics (NC1-NC4, memorization, dilation), label-noise experiments, the positive
unconstrained-features and memorization-dilation models, sweeps and reports.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``nclab.collect(model, data)``: the subpackage is itself callable, so binding the
    # module (which Python does on import) keeps working; imported lazily because it needs torch.
    if name == "collect":
        import importlib

        return importlib.import_module("nclab.collect")
    raise AttributeError(f"module 'nclab' has no attribute {name!r}")
