"""The streaming engine's fast paths stay exact: the one-hot subtraction r = h − μ_y (one GEMM
update per chunk), the max-softmax confidence from one row reduction, and the grouping of
rows (chunks inside groups) on collapsed float32 features, where any cancellation would show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nclab.metrics import NCAccumulator, nc_metrics
from nclab.metrics.calibration import CalibrationState

from test_metrics import reference


def _collapsed(rng, *, n, C, d, noise, scale=10.0):
    """float32 features at distance ``noise`` (relative to ``scale``) of their class means, 15 %
    label noise, a classifier; every class keeps correctly labelled samples."""
    yc = np.arange(n) % C
    mu = (np.abs(rng.normal(size=(C, d))) + 1.0) * scale
    x = (mu[yc] * (1.0 + rng.normal(size=(n, d)) * noise)).astype(np.float32)
    flip = (rng.random(n) < 0.15) & (np.arange(n) >= 2 * C)
    y = np.where(flip, (yc + 1) % C, yc)
    W = rng.normal(size=(C, d)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)
    return x, y, yc, W, b


def test_identical_features_give_exactly_zero_within_class_spread():
    # every sample equals its class's float32 vector: the float64 mean is that vector exactly,
    # so r = h − μ_y must be exactly 0 — a subtraction through any cancelling form would not be
    rng = np.random.default_rng(0)
    C, d, n = 6, 40, 1200
    base = (rng.normal(size=(C, d)) * 1e3 + 5e3).astype(np.float32)
    y = np.arange(n) % C
    x = base[y]
    W = rng.normal(size=(C, d)).astype(np.float32)
    r = nc_metrics(x, y, weight=W, clean_labels=y, chunk_rows=7)
    for key in ("nc1", "nc1_pinv", "nc1_trace_ratio", "cdnv", "dilation", "dilation_std"):
        assert r[key] == 0.0, (key, r[key])
    assert r["nc4_ncc_mismatch"] == pytest.approx(float(np.mean(
        (x.astype(np.float64) @ W.T.astype(np.float64)).argmax(1) != y)), abs=0)


@pytest.mark.parametrize("noise", [1e-3, 1e-6])  # 1e-6: a few float32 ulps from the means
def test_collapsed_float32_full_suite_matches_float64_reference(noise):
    rng = np.random.default_rng(11)
    C, d, n = 5, 24, 1500
    x, y, yc, W, b = _collapsed(rng, n=n, C=C, d=d, noise=noise)
    ref = reference(x.astype(np.float64), y, C, W=W, b=b, yc=yc)
    for chunk in (None, 3, 64):
        got = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc, chunk_rows=chunk)
        assert got["nc1"] > 0 and got["cdnv"] > 0
        for key in ("nc1", "nc1_trace_ratio", "cdnv", "memorization", "dilation", "dilation_std",
                    "memorization_normalized", "dilation_normalized"):
            assert got[key] == pytest.approx(ref[key], rel=1e-9), (chunk, key, got[key], ref[key])
        for key in ("nc4_ncc_mismatch", "accuracy", "realized_noise_rate"):
            assert got[key] == ref[key], (chunk, key)
        assert got["ece"] == pytest.approx(ref["ece"], rel=1e-9, abs=1e-15), chunk


def test_one_hot_subtraction_is_the_plain_float64_subtraction():
    # the GEMM update r += (−1)·onehot @ μ has one non-zero term per entry: bit-identical to r − μ_y
    rng = np.random.default_rng(5)
    C, d, b = 7, 33, 301
    x = torch.from_numpy(rng.normal(size=(b, d)).astype(np.float32) * 1e4)
    y = torch.from_numpy(rng.integers(0, C, b))
    mu = torch.from_numpy(rng.normal(size=(C, d)) * 1e4)
    onehot = torch.zeros(b, C, dtype=torch.float64).scatter_(1, y[:, None], 1.0)
    r = x.to(torch.float64)
    r.addmm_(onehot, mu, alpha=-1.0)
    assert torch.equal(r, x.to(torch.float64) - mu[y])


def test_confidence_matches_softmax_and_ece_matches_reference():
    rng = np.random.default_rng(2)
    n, C = 5000, 10
    z = torch.from_numpy(rng.normal(size=(n, C)) * 4)
    z[:10] = 0.0  # ties: the first maximal index, confidence exactly 1/C
    z[10, 3] = 800.0  # a saturated row: confidence exactly 1
    y = torch.from_numpy(rng.integers(0, C, n))
    st = CalibrationState(bins=15)
    st.update(z[:2000], y[:2000], None)
    top, pred = z[2000:].max(dim=1)
    st.update(z[2000:], y[2000:], None, top=top, pred=pred)
    p = torch.softmax(z, dim=1)
    conf = p.max(dim=1).values
    pred_all = z.argmax(dim=1)
    assert int(pred_all[0]) == 0
    ece = 0.0
    for k in range(15):
        m = (conf > k / 15) & (conf <= (k + 1) / 15) if k else conf <= 1 / 15
        if m.any():
            ece += float(m.double().mean()) * abs(float((pred_all[m] == y[m]).double().mean()) - float(conf[m].mean()))
    assert st.ece() == pytest.approx(ece, rel=1e-12)
    assert st.accuracy() == float((pred_all == y).double().mean())


def test_groups_and_batches_change_nothing():
    rng = np.random.default_rng(8)
    C, d, n = 4, 16, 3000
    x, y, yc, W, b = _collapsed(rng, n=n, C=C, d=d, noise=1e-2)
    base = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc)
    acc = NCAccumulator(C, weight=W, bias=b, within="projected", chunk_rows=5)
    for _ in range(2):
        for lo in range(0, n, 777):
            acc.update(x[lo:lo + 777], y[lo:lo + 777], clean_labels=yc[lo:lo + 777])
        if acc.phase == 1:
            acc.start_second_pass()
    got = acc.compute()
    for k, v in base.scalars().items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-13), k


def test_collapsed_per_sample_distances_match_explicit_float64():
    # mislabeled samples that stayed at their true class: their distance to that class's clean
    # centroid (and to the nearest other mean) is tiny against the expansion around μ_y, which
    # cancels; those rows are recomputed from the features and must match the direct distance
    rng = np.random.default_rng(4)
    C, d, n = 4, 32, 1200
    x, y, yc, W, b = _collapsed(rng, n=n, C=C, d=d, noise=1e-6)
    got = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc, per_sample=True, chunk_rows=16).per_sample
    x64 = x.astype(np.float64)
    mu = np.stack([x64[y == c].mean(0) for c in range(C)])
    nu = np.stack([x64[(y == c) & (yc == c)].mean(0) for c in range(C)])
    dist = np.linalg.norm(x64[:, None, :] - mu[None], axis=2)
    given = dist[np.arange(n), y]
    dist[np.arange(n), y] = np.inf
    true = np.linalg.norm(x64 - nu[yc], axis=1)
    np.testing.assert_allclose(got["dist_given_mean"], given, rtol=1e-12)
    np.testing.assert_allclose(got["dist_nearest_other_mean"], dist.min(1), rtol=1e-9)
    np.testing.assert_allclose(got["dist_true_centroid"], true, rtol=1e-9)
    assert (y != yc).sum() > 100 and np.median(true[y != yc] / given[y != yc]) < 1e-4  # the cancelling case
