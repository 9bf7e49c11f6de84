"""Label noise: seeded, vectorised generators returning a :class:`NoisyLabels` record.

See :mod:`nclab.noise.core` for the kinds, their kernels and the exact-count option.
"""

from nclab.noise.core import (
    NOISE_KINDS,
    NoisyLabels,
    expected_transition,
    kernel_matrix,
    latent_classes,
    make_noise,
)

__all__ = ["NOISE_KINDS", "NoisyLabels", "make_noise", "latent_classes", "kernel_matrix", "expected_transition"]
