"""Issue 11: precision-aware rank (float32 logits/bottlenecks), per-convention ddof, the official
dilation and corruption biases, C = 2, sparse labels, chunking."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nclab.metrics import CONVENTIONS, NCAccumulator, nc_metrics
from nclab.metrics.chunking import auto_chunk_rows, group_rows
from nclab.metrics.within_class import input_eps, numerical_rank_tol

torch.set_num_threads(1)


def ref_nc1(x, y, C):
    """Naive float64 NC1 = tr(Σ_W Σ_B⁺)/C with Σ_B at its exact rank (codes have full class span)."""
    x = np.asarray(x, dtype=np.float64)
    mu = np.stack([x[y == c].mean(0) for c in range(C)])
    g = x.mean(0)
    r = x - mu[y]
    Sw = r.T @ r / len(y)
    Mc = mu - g
    Sb = Mc.T @ Mc / C
    return float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / C)


def codes_problem(rng, *, C, k, per_class, spread=0.4):
    """Codes in R^k whose C class means span R^k (k ≤ C − 1), with within-class noise."""
    mu = rng.normal(size=(C, k)) * 3
    y = np.repeat(np.arange(C), per_class)
    c = mu[y] + rng.normal(size=(len(y), k)) * spread
    return c, y


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*a, **kw)


# --------------------------------------------------------------------------- rank at input precision
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_nc1_equals_feature_nc1_when_d_below_c_minus_1(dtype):
    # the case: C = 100 classes in d = 32 dimensions; logits z = W h + b with W injective
    rng = np.random.default_rng(0)
    C, d = 100, 32
    h, y = codes_problem(rng, C=C, k=d, per_class=12)
    h = h.astype(dtype)
    W = rng.normal(size=(C, d)).astype(dtype)
    b = rng.normal(size=C).astype(dtype)
    z = h @ W.T + b  # computed in the input dtype, as a network would
    want = ref_nc1(h, y, C)
    with pytest.warns(RuntimeWarning, match="rank"):
        r = nc_metrics(h, y, logits=z)
    assert r["nc1"] == pytest.approx(want, rel=1e-4)
    assert r["nc1_logits"] == pytest.approx(want, rel=1e-4)
    assert r.info["nc1_logits_rank"] == d and r["nc1_rank"] == d
    # the same through the classifier (logits formed from W in pass 2)
    rw = quiet(nc_metrics, h, y, weight=W, bias=b)
    assert rw["nc1_logits"] == pytest.approx(want, rel=1e-4)


def test_float32_bottleneck_gives_the_codes_nc1_and_warns():
    # the second case: C = 10 class means spanning 5 of 64 dimensions, float32
    rng = np.random.default_rng(1)
    C, k, d = 10, 5, 64
    c, y = codes_problem(rng, C=C, k=k, per_class=40)
    A = rng.normal(size=(d, k))
    h = (c @ A.T + rng.normal(size=d) * 5).astype(np.float32)
    want = ref_nc1(c, y, C)
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        r = nc_metrics(h, y)
    assert r["nc1_rank"] == k
    assert r["nc1"] == pytest.approx(want, rel=1e-4)
    assert r["nc1_pinv"] == pytest.approx(want, rel=1e-4)
    assert r.info["input_eps"] == pytest.approx(float(np.finfo(np.float32).eps))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    C=st.integers(3, 12),
    k_frac=st.floats(0.0, 1.0),
    extra=st.integers(1, 24),
    dtype=st.sampled_from(["float32", "float64"]),
    within=st.sampled_from(["full", "projected"]),
)
def test_affine_image_of_codes_keeps_their_nc1(seed, C, k_frac, extra, dtype, within):
    """Features h = A c + a₀ (A injective) and logits z = W h + b (W injective on the image) have
    the NC1 of the codes c, in float32 and float64, with rank deficiency from a bottleneck."""
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (C - 2))  # 1 ≤ k ≤ C − 1: Σ_B of the codes has full rank k
    d = k + extra
    c, y = codes_problem(rng, C=C, k=k, per_class=8)
    A = np.linalg.qr(rng.normal(size=(d, k)))[0] * rng.uniform(0.5, 2.0, size=k)  # injective, well conditioned
    h = (c @ A.T + rng.normal(size=d)).astype(dtype)
    want = ref_nc1(c, y, C)
    r = quiet(nc_metrics, h, y, within=within)
    assert r["nc1_rank"] == k
    assert r["nc1"] == pytest.approx(want, rel=1e-4)
    if C >= k + 1:  # logits: W (C×d) injective on the image of A when C ≥ k
        W = rng.normal(size=(C, d)).astype(dtype)
        z = (h @ W.T + rng.normal(size=C)).astype(dtype)
        rz = quiet(nc_metrics, h, y, logits=z, within=within)
        assert rz["nc1_logits"] == pytest.approx(want, rel=1e-4)


def test_rank_tolerance_follows_the_input_dtype():
    assert input_eps(torch.float32) == pytest.approx(2**-23)
    assert input_eps(torch.float32, torch.float64) == pytest.approx(2**-23)
    assert input_eps() == pytest.approx(2**-52)
    assert input_eps(torch.bfloat16) == pytest.approx(2**-7)
    assert numerical_rank_tol(2.0, shape=(64, 10), eps=1e-7) == pytest.approx(1e-7 * 128)
    assert numerical_rank_tol(2.0, shape=(3, 4), eps=1e-7, scale=5.0) == pytest.approx(1e-7 * (8 + 2 * 5))


def test_full_rank_float64_is_not_truncated():
    rng = np.random.default_rng(2)
    c, y = codes_problem(rng, C=6, k=5, per_class=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no rank warning on a full-rank problem
        r = nc_metrics(c, y)
    assert r["nc1_rank"] == 5 and r["nc1"] == pytest.approx(ref_nc1(c, y, 6), rel=1e-10)


# --------------------------------------------------------------------------- conventions pinned by hand
# 1-D, class 0 = {0, 2} (mean 1, Σ‖r‖² = 2), class 1 = {10, 12, 14} (mean 12, Σ‖r‖² = 8), ‖μ₀ − μ₁‖² = 121.
_X = np.array([[0.0], [2.0], [10.0], [12.0], [14.0]])
_Y = np.array([0, 0, 1, 1, 1])
_CDNV = {0: (2 / 2 + 8 / 3) / 242, 1: (2 / 1 + 8 / 2) / 242}
# equinorm of the centred means: sample-weighted μ_G = 7.6 → norms (6.6, 4.4); class-mean μ_G = 6.5 → (5.5, 5.5)
_EQ = {0: np.std([6.6, 4.4]) / 5.5, 1: np.std([6.6, 4.4], ddof=1) / 5.5}


@pytest.mark.parametrize(
    "conv, cdnv_ddof, eq",
    [("papyan2020", 0, _EQ[0]), ("papyan_colab", 1, _EQ[1]), ("zhu2021", 0, _EQ[0]), ("rhubarbwu", 0, 0.0)],
)
def test_each_convention_pins_its_ddof(conv, cdnv_ddof, eq):
    r = nc_metrics(_X, _Y, convention=conv)
    assert CONVENTIONS[conv].cdnv_ddof == cdnv_ddof
    assert r["cdnv"] == pytest.approx(_CDNV[cdnv_ddof], rel=1e-12)
    assert r["nc2_equinorm_means"] == pytest.approx(eq, rel=1e-12, abs=1e-15)


def test_rhubarbwu_cdnv_matches_that_librarys_definition():
    # rhubarbwu/neural-collapse: V_c = Σ_{i∈c} ‖h_i − μ_c‖² / n_c ("VarNormAccumulator"),
    # CDNV = mean_{c<c'} (V_c + V_c') / (2 ‖μ_c − μ_c'‖²)
    rng = np.random.default_rng(3)
    C = 5
    x, y = codes_problem(rng, C=C, k=7, per_class=11)
    mu = np.stack([x[y == c].mean(0) for c in range(C)])
    V = np.array([((x[y == c] - mu[c]) ** 2).sum() / (y == c).sum() for c in range(C)])
    want = np.mean([(V[i] + V[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum()) for i in range(C) for j in range(i + 1, C)])
    assert nc_metrics(x, y, convention="rhubarbwu")["cdnv"] == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- dilation, corruption biases
def test_dilation_std_official_and_corruption_biases_by_hand():
    # clean class 0 at {0, 2, 4} (centroid 2, distances 2, 0, 2); clean class 1 at {10, 12}
    # (centroid 11, distances 1, 1); one sample of true class 0 labelled 1 at 7.
    x = np.array([[0.0], [2.0], [4.0], [10.0], [12.0], [7.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    yc = np.array([0, 0, 0, 1, 1, 0])
    r = nc_metrics(x, y, clean_labels=yc)
    # per-class std (ddof 0): class 0 sqrt(8/9), class 1 0 → mean over classes
    assert r["dilation_std_official"] == pytest.approx(math.sqrt(8 / 9) / 2, rel=1e-12)
    # pooled over all five clean distances {2, 0, 2, 1, 1}: mean 1.2, std sqrt(2.8/5)
    assert r["dilation_std"] == pytest.approx(math.sqrt(2.8 / 5), rel=1e-12)
    assert r["dilation"] == pytest.approx(1.2)
    # noisy-centroid projection: (7 − ν₀)(ν₁ − ν₀)/‖ν₁ − ν₀‖² = 5·9/81
    assert r["noisy_centroid_projection"] == pytest.approx(5 / 9)
    # official corruption_biases: given class 1 has mean 29/3 and mislabeled mean 7:
    # ⟨7 − 29/3, μ₀ − μ₁⟩/‖μ₀ − μ₁‖ = (−8/3)(−1) = 8/3; given class 0 has no mislabeled samples
    assert r["corruption_biases"][1][0] == pytest.approx(8 / 3)
    assert r["corruption_biases"][1][1] is None and r["corruption_biases"][0] == [None, None]
    assert r["corruption_bias_mean"] == pytest.approx(8 / 3)


def test_dilation_official_and_corruption_biases_match_naive_reference():
    rng = np.random.default_rng(4)
    C, d, n = 4, 6, 400
    yc = np.arange(n) % C
    mu = rng.normal(size=(C, d)) * 3
    x = mu[yc] + rng.normal(size=(n, d)) * rng.uniform(0.3, 1.5, size=C)[yc, None]
    flip = (rng.random(n) < 0.3) & (np.arange(n) >= C)
    y = np.where(flip, (yc + rng.integers(1, C, n)) % C, yc)
    for within in ("full", "projected"):
        r = nc_metrics(x.astype(np.float32), y, clean_labels=yc, within=within)
        xf = x.astype(np.float32).astype(np.float64)
        clean = y == yc
        nu = np.stack([xf[clean & (y == c)].mean(0) for c in range(C)])
        stds = [np.std(np.linalg.norm(xf[clean & (y == c)] - nu[c], axis=1)) for c in range(C)]
        assert r["dilation_std_official"] == pytest.approx(np.mean(stds), rel=1e-10)
        means = np.stack([xf[y == c].mean(0) for c in range(C)])
        for c in range(C):
            cm = xf[(y == c) & ~clean].mean(0)
            for k in range(C):
                if k == c:
                    assert r["corruption_biases"][c][k] is None
                    continue
                u = means[k] - means[c]
                assert r["corruption_biases"][c][k] == pytest.approx((cm - means[c]) @ u / np.linalg.norm(u), rel=1e-9)


# --------------------------------------------------------------------------- C = 2
def test_two_classes_etf_error_of_means_is_none_with_a_note():
    rng = np.random.default_rng(5)
    x, y = codes_problem(rng, C=2, k=3, per_class=20)
    r = nc_metrics(x, y, weight=rng.normal(size=(2, 3)))
    assert r["nc2_etf_error_means"] is None
    assert any("C = 2" in s for s in r.info["notes"])
    assert r["nc2_etf_error_weights"] is not None and r["nc1"] is not None
    r3 = nc_metrics(*codes_problem(rng, C=3, k=3, per_class=5))
    assert r3["nc2_etf_error_means"] is not None and r3.info["notes"] == []


def test_cli_metrics_handles_two_classes(tmp_path):
    from nclab.cli import _register_all, app

    _register_all()
    rng = np.random.default_rng(6)
    x, y = codes_problem(rng, C=2, k=3, per_class=20)
    path = tmp_path / "two.npz"
    np.savez(path, features=x.astype(np.float32), labels=y)
    runner = CliRunner()
    res = runner.invoke(app, ["metrics", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["nc2_etf_error_means"] is None
    res = runner.invoke(app, ["metrics", str(path)])
    assert res.exit_code == 0, res.output
    assert "C = 2" in res.stdout


# --------------------------------------------------------------------------- sparse labels, long lists
def test_sparse_labels_ask_for_num_classes():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="num_classes") as e:
        nc_metrics(x, np.array([0, 1, 0, 10**9]))
    assert len(str(e.value)) < 400
    with pytest.raises(ValueError, match="sparse"):
        nc_metrics(np.zeros((200_000, 1), dtype=np.float32), np.r_[np.zeros(199_999, int), 100_001])
    with pytest.raises(ValueError, match="sparse"):
        nc_metrics(x, np.array([0, 1, 2, 40]))  # 40 ≥ 10·n
    dense = quiet(nc_metrics, np.arange(16.0).reshape(8, 2), np.array([0, 1, 2, 3, 0, 1, 2, 3]))
    assert dense["num_classes"] == 4


def test_error_messages_cut_long_class_lists(rng):
    x = rng.normal(size=(40, 3))
    y = np.arange(40) % 4
    with pytest.raises(ValueError, match=r"4996 class\(es\) \[4, 5, .*…, 4999\] \(4996 in all\)") as e:
        nc_metrics(x, y, num_classes=5000)
    assert len(str(e.value)) < 400


def test_cli_sparse_labels_name_the_flag(tmp_path):
    from nclab.cli import _register_all, app

    _register_all()
    path = tmp_path / "sparse.npz"
    np.savez(path, features=np.zeros((3, 2), dtype=np.float32), labels=np.array([0, 1, 10**9]))
    res = CliRunner().invoke(app, ["metrics", str(path)])
    assert res.exit_code == 2 and "--num-classes" in res.output
    assert len(res.output) < 1000


# --------------------------------------------------------------------------- chunking
def test_chunk_size_changes_nothing(rng):
    C, d, n = 4, 7, 300
    yc = np.arange(n) % C
    x = (rng.normal(size=(C, d)) * 3)[yc] + rng.normal(size=(n, d))
    y = np.where((rng.random(n) < 0.2) & (np.arange(n) >= C), (yc + 1) % C, yc)
    W, b = rng.normal(size=(C, d)), rng.normal(size=C)
    base = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc)
    for chunk in (1, 7, 64):
        got = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc, chunk_rows=chunk, batch_size=100)
        for k, v in base.scalars().items():
            assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-13), (chunk, k)
    acc = NCAccumulator(C, chunk_rows=5)
    acc.update(x, y)
    assert acc.compute()["nc1"] == pytest.approx(nc_metrics(x, y, within="full")["nc1"], rel=1e-10)


def test_auto_chunk_rows_follows_cache_and_dimension():
    assert auto_chunk_rows(512, cache_bytes=1 << 20) == 256
    assert auto_chunk_rows(64, cache_bytes=1 << 20) == 2048
    assert auto_chunk_rows(100_000, cache_bytes=1 << 20) == 256  # floor
    assert auto_chunk_rows(1, cache_bytes=1 << 30) == 8192  # ceiling
    assert auto_chunk_rows(512, cache_bytes=5 << 20) == 1024
    assert group_rows(256) == 16384 and group_rows(8192) == 16384 and group_rows(1) == 64
    assert group_rows(32768) == 32768  # never less than one chunk
