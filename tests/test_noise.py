"""Label-noise generators: statistics against targets, exactness, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nclab.noise import NOISE_KINDS, NoisyLabels, expected_transition, latent_classes, make_noise
from nclab.seeding import numpy_generator

Z = 5.0  # tolerance in binomial standard deviations (seeded, so no flakiness; 5 sd keeps it honest)


def _labels(C: int, per_class: int, seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(C), per_class)
    return np.random.default_rng(seed).permutation(y)


def _assert_transition_close(nl: NoisyLabels, target: np.ndarray) -> None:
    """Each empirical entry within Z binomial std of its target (n_c trials per row)."""
    n_c = nl.counts.sum(axis=1)[:, None]
    sd = np.sqrt(target * (1 - target) / n_c)
    err = np.abs(nl.transition - target)
    # entries with target 0 or 1 must match exactly (sd = 0)
    assert np.all(err <= Z * sd + 1e-12), f"max err {err.max():.4f}\n{nl.transition}\nvs\n{target}"


@pytest.mark.parametrize("C,rate", [(2, 0.2), (3, 0.4), (10, 0.3)])
def test_symmetric_rate_and_transition(C, rate):
    y = _labels(C, 4000)
    nl = make_noise(y, kind="symmetric", rate=rate, num_classes=C, generator=np.random.default_rng(1))
    n = y.size
    assert abs(nl.realized_rate - rate) <= Z * np.sqrt(rate * (1 - rate) / n)
    target = (1 - rate) * np.eye(C) + rate * (1 - np.eye(C)) / (C - 1)
    np.testing.assert_allclose(nl.target_transition, target)
    _assert_transition_close(nl, target)
    np.testing.assert_array_equal(nl.clean, y)
    np.testing.assert_array_equal(nl.is_noisy, nl.noisy != y)


@pytest.mark.parametrize("C", [2, 5])
def test_symmetric_all_flip_rate_is_p_times_c_minus_1_over_c(C):
    rate = 0.4
    y = _labels(C, 6000)
    nl = make_noise(y, kind="symmetric_all", rate=rate, num_classes=C, generator=np.random.default_rng(2))
    p_flip = rate * (C - 1) / C
    assert nl.spec["expected_flip_rate"] == pytest.approx(p_flip)
    assert abs(nl.realized_rate - p_flip) <= Z * np.sqrt(p_flip * (1 - p_flip) / y.size)
    # and it is clearly NOT the symmetric flip rate `rate`
    assert abs(nl.realized_rate - rate) > 10 * np.sqrt(rate * (1 - rate) / y.size)
    _assert_transition_close(nl, (1 - rate) * np.eye(C) + rate / C)


def test_pairflip_default_and_custom_map():
    C, rate = 4, 0.35
    y = _labels(C, 5000)
    nl = make_noise(y, kind="pairflip", rate=rate, num_classes=C, generator=np.random.default_rng(3))
    target = (1 - rate) * np.eye(C) + rate * np.roll(np.eye(C), 1, axis=1)
    _assert_transition_close(nl, target)
    assert nl.spec["pairs"] == {0: 1, 1: 2, 2: 3, 3: 0}
    # custom map: only 0 -> 2 and 3 -> 1 flip; classes 1, 2 untouched
    nl2 = make_noise(y, kind="pairflip", rate=rate, num_classes=C, generator=np.random.default_rng(3), pairs={0: 2, 3: 1})
    assert not nl2.is_noisy[np.isin(y, [1, 2])].any()
    assert set(np.unique(nl2.noisy[(y == 0) & nl2.is_noisy])) == {2}
    assert set(np.unique(nl2.noisy[(y == 3) & nl2.is_noisy])) == {1}
    T = np.eye(C)
    T[0] = [1 - rate, 0, rate, 0]
    T[3] = [0, rate, 0, 1 - rate]
    _assert_transition_close(nl2, T)


def test_matrix_kind_matches_user_matrix():
    T = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]])
    y = _labels(3, 8000)
    nl = make_noise(y, kind="matrix", num_classes=3, transition=T, generator=np.random.default_rng(4))
    _assert_transition_close(nl, T)
    assert nl.transition[1, 1] == 1.0  # a deterministic row stays exact
    # with a rate, T_eff = (1 - r) I + r T
    nl2 = make_noise(y, kind="matrix", rate=0.5, num_classes=3, transition=T, generator=np.random.default_rng(4))
    _assert_transition_close(nl2, 0.5 * np.eye(3) + 0.5 * T)
    np.testing.assert_allclose(expected_transition("matrix", rate=0.5, num_classes=3, transition=T), nl2.target_transition)


def test_matrix_with_symmetric_kernel_agrees_with_symmetric_kind_statistically():
    C, rate = 3, 0.3
    y = _labels(C, 8000)
    K = (1 - np.eye(C)) / (C - 1)
    a = make_noise(y, kind="symmetric", rate=rate, num_classes=C, generator=np.random.default_rng(5))
    b = make_noise(y, kind="matrix", rate=rate, transition=K, num_classes=C, generator=np.random.default_rng(6))
    np.testing.assert_allclose(a.target_transition, b.target_transition)
    n_c = 8000
    assert np.all(np.abs(a.transition - b.transition) <= Z * np.sqrt(2 * 0.25 / n_c))


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_exact_counts_are_exact_per_class(kind):
    C, rate = 3, 0.3
    counts = np.array([1000, 333, 57])
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(C), counts))
    nl = make_noise(y, kind=kind, rate=rate, num_classes=C, generator=np.random.default_rng(7), exact=True)
    flips = np.bincount(y[nl.is_noisy], minlength=C)
    np.testing.assert_array_equal(flips, np.rint(rate * counts).astype(int))
    # which samples flip is random: another generator picks a different set
    nl2 = make_noise(y, kind=kind, rate=rate, num_classes=C, generator=np.random.default_rng(8), exact=True)
    assert not np.array_equal(nl.is_noisy, nl2.is_noisy)


def test_exact_symmetric_targets_are_uniform_over_other_classes():
    C, rate = 4, 0.5
    y = _labels(C, 6000)
    nl = make_noise(y, kind="symmetric", rate=rate, num_classes=C, generator=np.random.default_rng(9), exact=True)
    off = nl.transition[~np.eye(C, dtype=bool)].reshape(C, C - 1)
    # exactly 3000 of 6000 flip per class; each lands on one of 3 others: Binomial(3000, 1/3) / 6000
    sd = np.sqrt(3000 * (1 / 3) * (2 / 3)) / 6000
    assert np.all(np.abs(off - rate / (C - 1)) <= Z * sd)
    np.testing.assert_allclose(np.diag(nl.transition), 1 - rate)


def test_determinism_and_torch_input():
    y = _labels(5, 200)
    a = make_noise(y, kind="symmetric", rate=0.3, num_classes=5, generator=numpy_generator(11, "noise"))
    b = make_noise(torch.from_numpy(y), kind="symmetric", rate=0.3, num_classes=5, generator=numpy_generator(11, "noise"))
    c = make_noise(y, kind="symmetric", rate=0.3, num_classes=5, generator=numpy_generator(12, "noise"))
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert not np.array_equal(a.noisy, c.noisy)
    assert a.noisy.dtype == np.int64 and a.clean.dtype == np.int64


def test_samples_from_original_labels_and_does_not_mutate_input():
    y = _labels(3, 300)
    y_before = y.copy()
    nl = make_noise(y, kind="symmetric", rate=1.0, num_classes=3, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(y, y_before)
    assert nl.realized_rate == 1.0  # rate 1: every label moves to ANOTHER class than the original
    # noise of noise is not what make_noise does: feeding noisy labels gives clean = old noisy
    nl2 = make_noise(nl.noisy, kind="symmetric", rate=1.0, num_classes=3, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(nl2.clean, nl.noisy)
    with pytest.raises(ValueError):
        nl.noisy[0] = 0  # records are read-only


def test_rate_zero_and_none_kind_are_identity():
    y = _labels(3, 100)
    for kind in NOISE_KINDS[:4]:
        nl = make_noise(y, kind=kind, rate=0.0, num_classes=3, generator=np.random.default_rng(0))
        np.testing.assert_array_equal(nl.noisy, y)
        assert nl.realized_rate == 0.0
    nl = make_noise(y, kind="none", num_classes=3, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(nl.transition, np.eye(3))


def test_latent_classes():
    C, q = 2, 0.25
    y = _labels(C, 10000)
    base = make_noise(y, kind="symmetric_all", rate=0.2, num_classes=C, generator=np.random.default_rng(1))
    nl = latent_classes(base, fraction=q, generator=np.random.default_rng(2))
    assert nl.num_classes == 4 and nl.clean_num_classes == 2
    assert nl.transition.shape == (2, 4)
    np.testing.assert_array_equal(nl.clean, y)
    np.testing.assert_array_equal(nl.noisy % C, base.noisy)  # moves keep the base label
    moved = nl.noisy >= C
    assert abs(moved.mean() - q) <= Z * np.sqrt(q * (1 - q) / y.size)
    # moving to a latent class is not mislabeling
    np.testing.assert_array_equal(nl.is_noisy, base.is_noisy)
    assert nl.realized_rate == base.realized_rate
    _assert_transition_close(nl, nl.target_transition)
    assert nl.spec["latent_fraction"] == q and nl.spec["kind"] == "symmetric_all"
    exact = latent_classes(base, fraction=q, generator=np.random.default_rng(2), exact=True)
    per_label = np.bincount(base.noisy, minlength=C)
    np.testing.assert_array_equal(np.bincount(exact.noisy, minlength=4)[C:], np.rint(q * per_label))
    with pytest.raises(ValueError, match="already"):
        latent_classes(nl, fraction=q, generator=np.random.default_rng(0))


def test_as_arrays_roundtrip(tmp_path):
    y = _labels(3, 50)
    nl = latent_classes(
        make_noise(y, kind="pairflip", rate=0.3, num_classes=3, generator=np.random.default_rng(0)),
        fraction=0.1,
        generator=np.random.default_rng(1),
    )
    np.savez(tmp_path / "noise.npz", **nl.as_arrays())
    with np.load(tmp_path / "noise.npz", allow_pickle=False) as f:
        back = NoisyLabels.from_arrays(f)
    np.testing.assert_array_equal(back.noisy, nl.noisy)
    np.testing.assert_array_equal(back.transition, nl.transition)
    assert back.spec == {**nl.spec, "pairs": {str(k): v for k, v in nl.spec["pairs"].items()}}
    assert back.realized_rate == nl.realized_rate


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"rate": 1.5}, ValueError, r"rate must be in \[0, 1\]"),
        ({"rate": -0.1}, ValueError, r"rate must be in \[0, 1\]"),
        ({"rate": float("nan")}, ValueError, r"rate must be in \[0, 1\]"),
        ({"rate": "0.2"}, TypeError, "rate must be a number"),
        ({"labels": np.array([0, 1, 3])}, ValueError, r"\[0, 3\)"),
        ({"labels": np.array([0, -1])}, ValueError, "out-of-range"),
        ({"labels": np.array([0.0, 1.5])}, TypeError, "integers"),
        ({"labels": np.zeros((2, 2), dtype=int)}, ValueError, "1-D"),
        ({"labels": np.array([], dtype=int)}, ValueError, "empty"),
        ({"kind": "symetric"}, ValueError, "Did you mean 'symmetric'"),
        ({"generator": 0}, TypeError, "numpy.random.Generator"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"kind": "pairflip", "pairs": {0: 0}}, ValueError, "itself"),
        ({"kind": "pairflip", "pairs": {0: 7}}, ValueError, "pairs target"),
        ({"kind": "none", "rate": 0.3}, ValueError, "kind='none'"),
        ({"kind": "symmetric", "transition": np.eye(3)}, ValueError, "only used with kind='matrix'"),
        ({"kind": "matrix", "rate": None}, ValueError, "needs transition"),
        ({"kind": "matrix", "rate": None, "transition": np.eye(2)}, ValueError, "shape"),
        ({"kind": "matrix", "rate": None, "transition": [[0.5, 0.6, -0.1], [0, 1, 0], [0, 0, 1]]}, ValueError, ">= 0"),
        ({"kind": "matrix", "rate": None, "transition": [[0.5, 0.4, 0], [0, 1, 0], [0, 0, 1]]}, ValueError, "row 0 sums"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    args = dict(labels=np.array([0, 1, 2, 1]), kind="symmetric", rate=0.2, num_classes=3, generator=np.random.default_rng(0))
    args.update(kwargs)
    labels = args.pop("labels")
    with pytest.raises(exc, match=match):
        make_noise(labels, **args)


def test_vectorised_speed():
    import time

    y = np.random.default_rng(0).integers(0, 10, 1_000_000)
    t = time.perf_counter()
    make_noise(y, kind="symmetric", rate=0.3, num_classes=10, generator=np.random.default_rng(0), exact=True)
    assert time.perf_counter() - t < 2.0  # a Python loop over 1e6 samples would take far longer


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(
    C=st.integers(2, 6),
    n=st.integers(1, 200),
    rate=st.floats(0, 1),
    kind=st.sampled_from(["symmetric", "symmetric_all", "pairflip"]),
    exact=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_property(C, n, rate, kind, exact, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    nl = make_noise(y, kind=kind, rate=rate, num_classes=C, generator=rng, exact=exact)
    np.testing.assert_array_equal(nl.clean, y)
    assert nl.noisy.min() >= 0 and nl.noisy.max() < C
    np.testing.assert_allclose(nl.transition.sum(1)[np.bincount(y, minlength=C) > 0], 1.0)
    if kind == "pairflip":
        assert np.all((nl.noisy == y) | (nl.noisy == (y + 1) % C))
    if exact and kind != "symmetric_all":
        n_c = np.bincount(y, minlength=C)
        np.testing.assert_array_equal(np.bincount(y[nl.is_noisy], minlength=C), np.rint(rate * n_c))
