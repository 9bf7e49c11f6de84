"""Metrics engine: hand-computed cases, exact frames, naive references, streaming invariance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nclab.metrics import CONVENTIONS, NCAccumulator, evaluate_stream, nc_metrics
from nclab.metrics.geometry import etf_gram

EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- reference
def reference(x, y, C, *, W=None, b=None, yc=None, conv="zhu2021"):
    """A deliberately naive float64 implementation (loops, explicit Σ_W and pinv)."""
    cv = CONVENTIONS[conv] if isinstance(conv, str) else conv
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mu = np.stack([x[y == c].mean(axis=0) for c in range(C)])
    mg = x.mean(axis=0) if cv.global_mean == "samples" else mu.mean(axis=0)
    Sw = np.zeros((d, d))
    for i in range(n):
        v = x[i] - mu[y[i]]
        Sw += np.outer(v, v)
    Sw /= n
    Mc = mu - mg
    Sb = Mc.T @ Mc / C
    lam, vec = np.linalg.eigh(Sb)
    order = np.argsort(lam)[::-1][: C - 1]
    nc1 = sum(vec[:, j] @ Sw @ vec[:, j] / lam[j] for j in order) / C
    out = {
        "nc1": nc1,
        "nc1_pinv": np.trace(Sw @ np.linalg.pinv(Sb, rcond=d * EPS, hermitian=True)) / C,
        "nc1_trace_ratio": np.trace(Sw) / np.trace(Sb),
    }
    ddof = cv.std_ddof
    var = [((x[y == c] - mu[c]) ** 2).sum() / ((y == c).sum() - cv.cdnv_ddof) for c in range(C)]
    pairs = [(i, j) for i in range(C) for j in range(i + 1, C)]
    out["cdnv"] = np.mean([(var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2)) for i, j in pairs])
    norms = np.linalg.norm(Mc, axis=1)
    out["nc2_equinorm_means"] = norms.std(ddof=ddof) / norms.mean()
    cos = [Mc[i] @ Mc[j] / (norms[i] * norms[j]) for i in range(C) for j in range(C) if i != j]
    out["nc2_equiangular_means"] = np.mean(np.abs(np.array(cos) + 1 / (C - 1)))
    out["nc2_cos_std_means"] = np.std(cos, ddof=ddof)
    etf = (np.eye(C) - np.ones((C, C)) / C) / np.sqrt(C - 1)
    G = Mc @ Mc.T
    out["nc2_etf_error_means"] = np.linalg.norm(G / np.linalg.norm(G) - etf)
    G = mu @ mu.T
    out["nc2_orthogonal_error_means"] = np.linalg.norm(G / np.linalg.norm(G) - np.eye(C) / np.sqrt(C))
    # NCC by brute force
    ncc = np.array([np.argmin([np.linalg.norm(x[i] - mu[c]) for c in range(C)]) for i in range(n)])
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        b = np.zeros(C) if b is None else np.asarray(b, dtype=np.float64)
        wn = np.linalg.norm(W, axis=1)
        out["nc2_equinorm_weights"] = wn.std(ddof=ddof) / wn.mean()
        G = W @ W.T
        out["nc2_etf_error_weights"] = np.linalg.norm(G / np.linalg.norm(G) - etf)
        out["nc2_orthogonal_error_weights"] = np.linalg.norm(G / np.linalg.norm(G) - np.eye(C) / np.sqrt(C))
        out["nc3_papyan"] = np.linalg.norm(W.T / np.linalg.norm(W) - Mc.T / np.linalg.norm(Mc)) ** 2
        P = W @ Mc.T
        out["nc3_zhu"] = np.linalg.norm(P / np.linalg.norm(P) - etf)
        out["nc4_bias_norm"] = np.linalg.norm(W @ mg + cv.bias_sign * b)
        logits = x @ W.T + b
        pred_b, pred_nb = logits.argmax(1), (x @ W.T).argmax(1)
        out["nc4_ncc_mismatch"] = np.mean((pred_b if cv.ncc_use_bias else pred_nb) != ncc)
        out["accuracy"] = np.mean(pred_b == y)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        conf = p.max(1)
        ece = 0.0
        for k in range(15):
            lo, hi = k / 15, (k + 1) / 15
            m = (conf > lo) & (conf <= hi) if k else (conf <= hi)
            if m.any():
                ece += m.mean() * abs(np.mean(pred_b[m] == y[m]) - conf[m].mean())
        out["ece"] = ece
    if yc is not None:
        nu = np.stack([x[(yc == c) & (y == c)].mean(axis=0) for c in range(C)])
        mem = [np.linalg.norm(x[i] - nu[yc[i]]) for i in range(n) if y[i] != yc[i]]
        dil = [np.linalg.norm(x[i] - nu[y[i]]) for i in range(n) if y[i] == yc[i]]
        scale = np.mean([np.linalg.norm(nu[i] - nu[j]) for i, j in pairs])
        out["memorization"] = np.mean(mem)
        out["dilation"] = np.mean(dil)
        out["dilation_std"] = np.std(dil, ddof=ddof)
        out["memorization_normalized"] = np.mean(mem) / scale
        out["dilation_normalized"] = np.mean(dil) / scale
        out["realized_noise_rate"] = np.mean(y != yc)
    return out


def noisy_problem(rng, *, n=300, C=4, d=7, noise=0.25, scale=3.0, spread=0.7):
    yc = rng.integers(0, C, n)
    yc[:C] = np.arange(C)  # every class present
    mu = np.abs(rng.normal(size=(C, d))) * scale
    x = np.abs(mu[yc] + rng.normal(size=(n, d)) * spread)
    flip = rng.random(n) < noise
    flip[:C] = False  # keep a correctly labelled sample per class
    y = np.where(flip, (yc + rng.integers(1, C, n)) % C, yc)
    W = rng.normal(size=(C, d))
    b = rng.normal(size=C)
    return x, y, yc, W, b


def assert_close(got: dict, ref: dict, rtol=1e-9):
    for k, v in ref.items():
        assert got[k] is not None, k
        assert math.isclose(got[k], float(v), rel_tol=rtol, abs_tol=1e-12), (k, got[k], v)


# --------------------------------------------------------------------------- hand-computed
def test_hand_computed_binary_nc1():
    a = 0.5
    x = np.array([[1 + a, 0], [1 - a, 0], [-1 + a, 0], [-1 - a, 0]])
    y = np.array([0, 0, 1, 1])
    r = nc_metrics(x, y)
    # Σ_W = diag(a², 0), Σ_B = diag(1, 0): NC1 = a²/2; tr ratio a²; CDNV (a²+a²)/(2·4)
    assert r["nc1"] == pytest.approx(a * a / 2, rel=1e-12)
    assert r["nc1_trace_ratio"] == pytest.approx(a * a, rel=1e-12)
    assert r["cdnv"] == pytest.approx(2 * a * a / 8, rel=1e-12)
    assert r["nc1_rank"] == 1


def test_hand_computed_memorization_dilation():
    # clean class 0 at {0, 2} (centroid 1), clean class 1 at {10, 12} (centroid 11);
    # one sample of true class 0 labelled 1 sits at 7.
    x = np.array([[0.0], [2.0], [10.0], [12.0], [7.0]])
    y = np.array([0, 0, 1, 1, 1])
    yc = np.array([0, 0, 1, 1, 0])
    r = nc_metrics(x, y, clean_labels=yc, per_sample=True)
    assert r["memorization"] == pytest.approx(6.0)
    assert r["dilation"] == pytest.approx(1.0)
    assert r["dilation_std"] == pytest.approx(0.0, abs=1e-12)
    assert r["clean_centroid_distance"] == pytest.approx(10.0)
    assert r["memorization_normalized"] == pytest.approx(0.6)
    assert r["dilation_normalized"] == pytest.approx(0.1)
    assert r["noisy_centroid_projection"] == pytest.approx(0.6)
    assert r["noisy_centroid_projection_pairs"][0][1] == pytest.approx(0.6)
    assert r["noisy_centroid_projection_pairs"][1][0] is None
    assert r["realized_noise_rate"] == pytest.approx(0.2)
    assert r["memorization_per_class"] == [pytest.approx(6.0), None]
    mem = r.per_sample["memorization"]
    assert np.isnan(mem[:4]).all() and mem[4] == pytest.approx(6.0)
    # given-label means: class 0 mean 1, class 1 mean (10+12+7)/3
    assert r.per_sample["dist_given_mean"][4] == pytest.approx(abs(7 - 29 / 3))


def test_hand_computed_conventions_bias_and_global_mean():
    # imbalanced 1-D classes: class 0 = {0, 0, 0}, class 1 = {2}
    x = np.array([[0.0], [0.0], [0.0], [2.0]])
    y = np.array([0, 0, 0, 1])
    W, b = np.array([[1.0], [-1.0]]), np.array([1.0, 0.0])
    got = {name: nc_metrics(x, y, weight=W, bias=b, convention=name)["nc4_bias_norm"] for name in CONVENTIONS}
    # samples-weighted μ_G = 0.5: W μ_G = (0.5, -0.5); + b -> (1.5, -0.5); - b -> (-0.5, -0.5)
    assert got["papyan2020"] == pytest.approx(math.sqrt(2.5))
    assert got["zhu2021"] == pytest.approx(math.sqrt(0.5))
    # mean of class means μ_G = 1: (1, -1) + b = (2, -1)
    assert got["rhubarbwu"] == pytest.approx(math.sqrt(5.0))


def test_hand_computed_ddof_and_ncc_bias():
    # three classes with centred-mean norms 1, 2, 3 (after centring at the mean of means)
    mu = np.array([[1.0, 0.0], [-0.5, 2.0], [-0.5, -2.0]])
    x = np.repeat(mu, 2, axis=0)
    y = np.repeat(np.arange(3), 2)
    norms = np.linalg.norm(mu - mu.mean(0), axis=1)
    r0 = nc_metrics(x, y, convention="papyan2020")
    r1 = nc_metrics(x, y, convention="papyan_colab")
    assert r0["nc2_equinorm_means"] == pytest.approx(norms.std(ddof=0) / norms.mean())
    assert r1["nc2_equinorm_means"] == pytest.approx(norms.std(ddof=1) / norms.mean())
    # a bias large enough to send every sample to class 2: mismatch 2/3 with bias, 0 without
    W = mu.copy()
    b = np.array([0.0, 0.0, 100.0])
    with_b = nc_metrics(x, y, weight=W, bias=b, convention="papyan2020")
    no_b = nc_metrics(x, y, weight=W, bias=b, convention="rhubarbwu")
    assert with_b["nc4_ncc_mismatch"] == pytest.approx(2 / 3)
    assert no_b["nc4_ncc_mismatch"] == pytest.approx(0.0)
    assert with_b["nc4_ncc_mismatch_nobias"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- exact frames
@pytest.mark.parametrize("C", [2, 3, 5, 10])
def test_exact_simplex_etf_gives_zero_errors(C):
    d = C + 3
    M = np.zeros((C, d))
    M[:, :C] = np.sqrt(C / (C - 1)) * (np.eye(C) - 1.0 / C)  # rows: simplex ETF, unit norm
    x = np.repeat(M, 4, axis=0)
    y = np.repeat(np.arange(C), 4)
    r = nc_metrics(x, y, weight=M * 2.5, bias=np.zeros(C), convention="papyan2020")
    for key in ("nc1", "nc1_pinv", "nc2_equinorm_means", "nc2_etf_error_means", "nc2_etf_error_weights",
                "nc3_papyan", "nc3_zhu", "nc4_ncc_mismatch", "nc4_bias_norm", "nc2_equinorm_weights"):
        if C == 2 and key == "nc2_etf_error_means":
            assert r[key] is None  # two centred means are always opposite (see test_metrics_fixes)
            continue
        assert abs(r[key]) < 1e-12, (key, r[key])
    if C > 2:
        assert r["nc2_equiangular_means"] < 1e-12
    assert r["accuracy"] == 1.0


@pytest.mark.parametrize("C", [2, 3, 6])
def test_exact_orthogonal_frame(C):
    rho = 3.0
    M = np.zeros((C, C + 1))
    M[:, :C] = rho * np.eye(C)
    x = np.repeat(M, 3, axis=0)
    y = np.repeat(np.arange(C), 3)
    r = nc_metrics(x, y)
    assert r["nc2_orthogonal_error_means"] < 1e-12
    # the centred means of an orthogonal frame are a simplex ETF (no value for C = 2)
    assert r["nc2_etf_error_means"] is None if C == 2 else r["nc2_etf_error_means"] < 1e-12
    assert r["nc1"] == 0.0
    # and a simplex ETF is *not* an orthogonal frame: the error is large
    E = np.sqrt(C / (C - 1)) * (np.eye(C) - 1.0 / C)
    r2 = nc_metrics(np.repeat(E, 2, axis=0), np.repeat(np.arange(C), 2))
    assert r2["nc2_orthogonal_error_means"] > 0.3


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("conv", list(CONVENTIONS))
@pytest.mark.parametrize("within", ["full", "projected"])
def test_matches_naive_reference(rng, conv, within):
    x, y, yc, W, b = noisy_problem(rng)
    r = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc, convention=conv, within=within)
    assert_close(r.values, reference(x, y, 4, W=W, b=b, yc=yc, conv=conv))


def test_custom_convention_knob(rng):
    x, y, yc, W, b = noisy_problem(rng)
    conv = dataclasses.replace(CONVENTIONS["zhu2021"], name="custom", nc1_divide_by_classes=False, center_weights=True)
    r = nc_metrics(x, y, weight=W, bias=b, convention=conv)
    base = nc_metrics(x, y, weight=W, bias=b)
    assert r["nc1"] == pytest.approx(4 * base["nc1"], rel=1e-12)
    Wc = W - W.mean(0)
    G = Wc @ Wc.T
    etf = etf_gram(4).numpy()
    assert r["nc2_etf_error_weights"] == pytest.approx(np.linalg.norm(G / np.linalg.norm(G) - etf), rel=1e-12)


def test_logits_input_without_classifier(rng):
    x, y, yc, W, b = noisy_problem(rng)
    logits = x @ W.T + b
    r = nc_metrics(x, y, logits=logits, num_classes=4)
    ref = reference(x, y, 4, W=W, b=b)
    assert r["accuracy"] == pytest.approx(ref["accuracy"])
    assert r["ece"] == pytest.approx(ref["ece"])
    assert r["nc4_ncc_mismatch"] == pytest.approx(ref["nc4_ncc_mismatch"])
    nc1_logits_ref = reference(logits, y, 4)["nc1"]
    assert r["nc1_logits"] == pytest.approx(nc1_logits_ref, rel=1e-9)
    assert r["nc3_zhu"] is None  # needs W


# --------------------------------------------------------------------------- streaming
def _stream(x, y, yc, W, b, cuts, within):
    acc = NCAccumulator(4, weight=W, bias=b, within=within)
    bounds = [0, *sorted(cuts), len(y)]
    for p in range(2):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            acc.update(x[lo:hi], y[lo:hi], clean_labels=yc[lo:hi])
        if p == 0:
            acc.start_second_pass()
    return acc.compute()


_PROBLEM = noisy_problem(np.random.default_rng(7))
_ONE_SHOT = {
    w: nc_metrics(*_PROBLEM[:2], weight=_PROBLEM[3], bias=_PROBLEM[4], clean_labels=_PROBLEM[2], within=w)
    for w in ("full", "projected")
}


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12), within=st.sampled_from(["full", "projected"]))
def test_streaming_equals_one_shot_for_any_partition(cuts, within):
    x, y, yc, W, b = _PROBLEM
    one = _ONE_SHOT[within]
    got = _stream(x, y, yc, W, b, cuts, within)
    for k, v in one.scalars().items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-13), k


def test_merge_equals_single_accumulator(rng):
    x, y, yc, W, b = noisy_problem(rng)
    parts = np.array_split(np.arange(len(y)), 3)
    accs = [NCAccumulator(4, weight=W, bias=b) for _ in parts]
    for acc, idx in zip(accs, parts):
        acc.update(x[idx], y[idx], clean_labels=yc[idx])
    total = accs[0]
    for a in accs[1:]:
        total.merge(a)
    total.start_second_pass()
    total.update(x, y, clean_labels=yc)
    one = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc)
    for k, v in one.scalars().items():
        assert total.compute()[k] == pytest.approx(v, rel=1e-10, abs=1e-13), k


def test_evaluate_stream_reiterates_when_cache_is_small(rng):
    x, y, yc, W, b = noisy_problem(rng)
    calls = []

    def make():
        calls.append(1)
        for i in range(0, len(y), 64):
            yield {"features": torch.from_numpy(x[i:i + 64]), "labels": torch.from_numpy(y[i:i + 64]),
                   "clean_labels": torch.from_numpy(yc[i:i + 64])}

    big = evaluate_stream(make, num_classes=4, weight=W, bias=b, cache_bytes=1 << 30)
    assert len(calls) == 1  # cached
    small = evaluate_stream(make, num_classes=4, weight=W, bias=b, cache_bytes=100)
    assert len(calls) == 3  # pass 2 re-read the stream
    for k, v in big.scalars().items():
        assert small[k] == pytest.approx(v, rel=1e-12), k


def test_full_mode_gives_pass1_metrics_and_lists_missing(rng):
    x, y, yc, W, b = noisy_problem(rng)
    acc = NCAccumulator(4, weight=W, bias=b)
    acc.update(x, y, clean_labels=yc)
    r = acc.compute()
    assert r["nc1"] == pytest.approx(reference(x, y, 4)["nc1"], rel=1e-10)
    assert r["memorization"] is None and "memorization" in r.info["missing"]
    proj = NCAccumulator(4, within="projected")
    proj.update(x, y)
    assert proj.compute()["nc1"] is None


# --------------------------------------------------------------------------- numerics
def test_collapsed_float32_features_match_float64_and_are_nonnegative():
    rng = np.random.default_rng(3)
    C, d, n = 5, 64, 2000
    mu = np.abs(rng.normal(size=(C, d))) * 10
    y = np.arange(n) % C
    x32 = (mu[y] + rng.normal(size=(n, d)) * 1e-3).astype(np.float32)
    r = nc_metrics(x32, y)
    ref = reference(x32.astype(np.float64), y, C)
    assert r["nc1"] > 0
    assert r["nc1"] == pytest.approx(ref["nc1"], rel=1e-8)
    # the one-pass raw-moment float32 pipeline common in research code
    # (Σ_W = E[hhᵀ] − Σ_c p_c μ_c μ_cᵀ, then pinv) loses every digit here
    t = torch.from_numpy(x32)
    yt = torch.from_numpy(y)
    means = torch.stack([t[yt == c].mean(0) for c in range(C)])
    p = torch.bincount(yt).float() / n
    Sw = t.T @ t / n - (means.T * p) @ means
    Mc = means - t.mean(0)
    Sb = Mc.T @ Mc / C
    naive32 = float(torch.trace(Sw @ torch.linalg.pinv(Sb)) / C)
    assert naive32 < 0 or abs(naive32 - ref["nc1"]) / ref["nc1"] > 0.5


def test_binary_and_low_dimension_warn_and_report_rank(rng):
    # C = 2 works; d < C - 1 warns and reports the rank used
    x, y, *_ = noisy_problem(rng, C=2, d=3)
    r = nc_metrics(x, y)
    assert r["nc1_rank"] == 1 and r["nc1"] > 0
    x, y, *_ = noisy_problem(rng, C=6, d=2)
    with pytest.warns(RuntimeWarning, match="rank"):
        r = nc_metrics(x, y)
    assert r["nc1_rank"] == 2
    assert r.info["warnings"]


def test_rank_deficient_means_warn():
    # three classes whose means are collinear: Σ_B has rank 1 < C-1
    mu = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    x = np.repeat(mu, 3, axis=0) + np.tile([[0, 0.1], [0, -0.1], [0.05, 0]], (3, 1))
    y = np.repeat(np.arange(3), 3)
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        r = nc_metrics(x, y)
    assert r["nc1_rank"] == 1 and np.isfinite(r["nc1"]) and r["nc1"] >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng):
    x, y, yc, W, b = noisy_problem(rng)
    cpu = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc)
    dev = torch.device("cuda")
    gpu = nc_metrics(torch.tensor(x, device=dev, dtype=torch.float32), torch.tensor(y, device=dev),
                     weight=torch.tensor(W, device=dev), bias=torch.tensor(b, device=dev),
                     clean_labels=torch.tensor(yc, device=dev))
    ref = nc_metrics(x.astype(np.float32), y, weight=W, bias=b, clean_labels=yc)
    for k, v in ref.scalars().items():
        assert gpu[k] == pytest.approx(v, rel=1e-8, abs=1e-12), k
    assert cpu["nc1"] == pytest.approx(gpu["nc1"], rel=1e-5)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_have_clear_errors(rng):
    x, y, yc, W, b = noisy_problem(rng)
    xn = x.copy()
    xn[3, 1] = np.nan
    xn[5, 0] = np.inf
    with pytest.raises(ValueError, match="2 non-finite values"):
        nc_metrics(xn, y)
    with pytest.raises(ValueError, match="labels have 299 entries"):
        nc_metrics(x, y[:-1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        nc_metrics(x, y, num_classes=3)
    with pytest.raises(ValueError, match=r"class\(es\) \[4\] have no samples"):
        nc_metrics(x, y, num_classes=5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc_metrics(x, np.zeros(len(y), dtype=int), num_classes=1)
    with pytest.raises(TypeError, match="integer"):
        nc_metrics(x, y.astype(float))
    with pytest.raises(TypeError, match="floating point"):
        nc_metrics(x.astype(int), y)
    with pytest.raises(ValueError, match="shape"):
        nc_metrics(x[:, :, None], y)
    with pytest.raises(ValueError, match="weight has 3 columns"):
        nc_metrics(x, y, weight=W[:, :3])
    with pytest.raises(ValueError, match="unknown convention 'zhu'"):
        nc_metrics(x, y, convention="zhu")
    acc = NCAccumulator(4)
    acc.update(x[:10], y[:10], clean_labels=yc[:10])
    with pytest.raises(ValueError, match="clean_labels were given for some batches"):
        acc.update(x[10:], y[10:])
    with pytest.raises(ValueError, match="no samples were given"):
        NCAccumulator(3).compute()
    acc = NCAccumulator(4)
    acc.update(x, y)
    acc.start_second_pass()
    acc.update(x[:100], y[:100])
    with pytest.raises(ValueError, match="second pass saw 100 samples"):
        acc.compute()


def test_no_clean_samples_in_a_class_reports_none_with_warning():
    x = np.array([[0.0], [1.0], [5.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    yc = np.array([0, 0, 0, 0])  # class 1 only holds mislabeled samples
    with pytest.warns(RuntimeWarning, match="no correctly labelled samples"):
        r = nc_metrics(x, y, clean_labels=yc)
    assert r["memorization"] is None and r["realized_noise_rate"] == 0.5
