"""nclab: neural collapse under label noise.

Metrics (NC1-NC4, memorization, dilation), label-noise experiments, the positive
unconstrained-features and memorization-dilation models, sweeps and reports.
"""

__version__ = "0.1.0"
