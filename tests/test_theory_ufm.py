"""The UFM solver against the closed forms of ufm.closed_form (and Zhu et al. 2021)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.theory.geometry import etf_error, orthogonal_frame_error
from nclab.theory.ufm import closed_form, solve_ufm

LW, LH, K = 5e-3, 5e-3, 5


@pytest.mark.parametrize("n_cls", [2, 3, 4, 10])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_positive_solver_meets_closed_form(n_cls, alpha):
    loss = "ce" if alpha == 0 else "ls"
    res = solve_ufm(
        num_classes=n_cls, per_class=K, lambda_w=LW, lambda_h=LH, loss=loss,
        alpha=None if alpha == 0 else alpha, positive=True, starts=3, seed=1,
    )
    assert res.converged, res.pg_norm
    assert res.closed_form is not None and not res.closed_form.trivial
    for key, err in res.relative_errors().items():
        assert err < 1e-6, (key, err)
    s = res.structure
    assert s["orthogonal_frame_error"] < 1e-6  # uncentred means: orthogonal frame
    assert s["etf_error_means"] < 1e-6  # centred means: simplex ETF
    assert s["etf_error_weights"] < 1e-6
    assert s["self_duality_error"] < 1e-6
    assert s["within_class_variability"] < 1e-10
    assert res.features.min() >= 0.0


@pytest.mark.parametrize("n_cls", [2, 3, 4, 10])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_unconstrained_solver_meets_closed_form(n_cls, alpha):
    res = solve_ufm(
        num_classes=n_cls, per_class=K, lambda_w=LW, lambda_h=LH, loss="ls", alpha=alpha,
        positive=False, starts=2, seed=2,
    )
    assert res.converged
    for key, err in res.relative_errors().items():
        assert err < 1e-6, (key, err)
    s = res.structure
    assert s["etf_error_means"] < 1e-6
    assert s["etf_error_weights"] < 1e-6
    assert s["self_duality_error"] < 1e-6
    if n_cls > 2:
        # centred ETF, not an orthogonal frame: the Gram of the means has negative entries
        assert s["orthogonal_frame_error"] > 0.1


def test_positivity_costs_objective_and_changes_geometry():
    kw = dict(num_classes=4, per_class=K, lambda_w=LW, lambda_h=LH)
    pos = closed_form(**kw, positive=True)
    free = closed_form(**kw, positive=False)
    assert free.objective < pos.objective
    assert (pos.geometry, free.geometry) == ("orthogonal_frame", "simplex_etf")


def test_closed_form_is_stationary_for_the_reduced_objective():
    # the closed form minimizes log(1+(N-1)e^{-m}) + c_eff m over m: check against a fine grid
    n_cls, alpha = 5, 0.2
    cf = closed_form(num_classes=n_cls, per_class=K, lambda_w=LW, lambda_h=LH, loss="ls", alpha=alpha)
    c_eff = math.sqrt(LW * LH * n_cls * K * (n_cls - 1)) + alpha * (n_cls - 1) / n_cls
    m = np.linspace(0.0, 10.0, 200001)
    vals = np.log1p((n_cls - 1) * np.exp(-m)) + c_eff * m
    assert abs(m[vals.argmin()] - cf.margin) < 1e-4
    assert abs(vals.min() - cf.objective) < 1e-9


@pytest.mark.parametrize("positive", [True, False])
def test_ls_margin_and_norms_below_ce(positive):
    kw = dict(num_classes=4, per_class=K, lambda_w=LW, lambda_h=LH, positive=positive, starts=2, seed=3)
    ce = solve_ufm(**kw, loss="ce")
    ls = solve_ufm(**kw, loss="ls", alpha=0.1)
    assert ls.margin < ce.margin - 0.5
    assert ls.feature_norm < ce.feature_norm
    assert ls.weight_norm < ce.weight_norm


def test_small_lambda_limits():
    n_cls, alpha = 4, 0.1
    limit = math.log(1 + n_cls * (1 - alpha) / alpha)
    ls_margins, ce_margins = [], []
    for lam in (1e-3, 1e-5, 1e-7, 1e-9):
        kw = dict(num_classes=n_cls, per_class=K, lambda_w=lam, lambda_h=lam)
        ls_margins.append(closed_form(**kw, loss="ls", alpha=alpha).margin)
        ce_margins.append(closed_form(**kw).margin)
    gaps = [abs(m - limit) for m in ls_margins]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-6
    assert all(b > a + 4 for a, b in zip(ce_margins, ce_margins[1:]))  # grows like log(1/lambda)
    # and the solver follows the closed form at a small lambda too
    res = solve_ufm(num_classes=n_cls, per_class=K, lambda_w=1e-4, lambda_h=1e-4, loss="ls", alpha=alpha,
                    starts=2, seed=4)
    assert abs(res.margin - limit) < 0.05
    assert res.relative_errors()["margin"] < 1e-6


def test_trivial_region():
    # c = sqrt(lw lh N K (N-1)) = 0.8 > (N-1)/N = 0.75 for N=4, K=5, lw=lh=0.8/sqrt(60)
    lam = 0.8 / math.sqrt(4 * K * 3)
    cf = closed_form(num_classes=4, per_class=K, lambda_w=lam, lambda_h=lam)
    assert cf.trivial and cf.margin == 0 and cf.objective == pytest.approx(math.log(4))
    res = solve_ufm(num_classes=4, per_class=K, lambda_w=lam, lambda_h=lam, starts=2, seed=5)
    assert res.converged
    assert np.abs(res.weight).max() < 1e-6 and np.abs(res.features).max() < 1e-6
    assert res.objective == pytest.approx(math.log(4), abs=1e-10)
    # just inside the non-trivial region the optimum is not zero
    lam2 = 0.7 / math.sqrt(4 * K * 3)
    assert not closed_form(num_classes=4, per_class=K, lambda_w=lam2, lambda_h=lam2).trivial
    # label smoothing enlarges the trivial region: c + alpha (N-1)/N >= (N-1)/N
    assert closed_form(num_classes=4, per_class=K, lambda_w=lam2, lambda_h=lam2, loss="ls", alpha=0.2).trivial


@pytest.mark.parametrize("positive", [True, False])
def test_mse_closed_form(positive):
    res = solve_ufm(num_classes=3, per_class=K, lambda_w=LW, lambda_h=LH, loss="mse", positive=positive,
                    starts=2, seed=6)
    for key, err in res.relative_errors().items():
        assert err < 1e-6, (key, err)
    assert res.structure["orthogonal_frame_error"] < 1e-6


def test_mse_with_bias_unconstrained_closed_form():
    res = solve_ufm(num_classes=3, per_class=K, lambda_w=LW, lambda_h=LH, loss="mse", positive=False,
                    bias=True, starts=2, seed=7)
    for key, err in res.relative_errors().items():
        assert err < 1e-6, (key, err)
    assert res.structure["etf_error_means"] < 1e-6


def test_ce_with_bias_keeps_the_closed_form():
    res = solve_ufm(num_classes=3, per_class=K, lambda_w=LW, lambda_h=LH, bias=True, lambda_b=1e-2,
                    starts=2, seed=8)
    assert res.relative_errors()["objective"] < 1e-9
    assert np.abs(res.bias).max() < 1e-6


def test_wider_features_still_orthogonal_frame():
    res = solve_ufm(num_classes=3, per_class=K, dim=7, lambda_w=LW, lambda_h=LH, starts=3, seed=9)
    assert res.relative_errors()["objective"] < 1e-9
    assert res.structure["orthogonal_frame_error"] < 1e-6


def test_geometry_helpers_detect_non_frames():
    assert orthogonal_frame_error(np.eye(3)) < 1e-15
    assert orthogonal_frame_error(np.array([[1.0, 1.0], [0.0, 0.1]])) > 0.3
    etf = np.eye(3) - 1 / 3
    assert etf_error(etf) < 1e-15
    assert etf_error(np.eye(3)) > 0.1


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="dim"):
        solve_ufm(num_classes=4, per_class=2, dim=3, lambda_w=LW, lambda_h=LH)
    with pytest.raises(ValueError, match="lambda_w"):
        solve_ufm(num_classes=4, per_class=2, lambda_w=0.0, lambda_h=LH)
    with pytest.raises(ValueError, match="alpha"):
        solve_ufm(num_classes=4, per_class=2, lambda_w=LW, lambda_h=LH, loss="ls")
    with pytest.raises(ValueError, match="alpha"):
        solve_ufm(num_classes=4, per_class=2, lambda_w=LW, lambda_h=LH, loss="ce", alpha=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        solve_ufm(num_classes=4, per_class=2, lambda_w=LW, lambda_h=LH, loss="cee")


def test_seeded_starts_are_reproducible():
    kw = dict(num_classes=3, per_class=3, lambda_w=LW, lambda_h=LH, starts=2, seed=11)
    a, b = solve_ufm(**kw), solve_ufm(**kw)
    assert a.start_objectives == b.start_objectives
    np.testing.assert_array_equal(a.weight, b.weight)


def test_local_geometry_agrees_with_metrics_engine():
    res = solve_ufm(num_classes=4, per_class=3, lambda_w=LW, lambda_h=LH, starts=1, seed=12, init_scale=0.3,
                    max_iter=5)  # stopped early on purpose: a non-collapsed, generic configuration
    s = res.structure
    assert s["within_class_variability"] > 1e-6
    assert s["nc2_orthogonal_error_means"] == pytest.approx(s["orthogonal_frame_error"], rel=1e-9)
    assert s["nc2_etf_error_means"] == pytest.approx(s["etf_error_means"], rel=1e-9)
    assert s["nc2_etf_error_weights"] == pytest.approx(s["etf_error_weights"], rel=1e-9)
    assert s["nc1_trace_ratio"] == pytest.approx(s["within_class_variability"], rel=1e-9)


@pytest.mark.parametrize("bias,lambda_b,status", [
    (False, 0.0, "not a local minimum"),  # a saddle: tiny perturbations escape to the frame
    (True, 0.0, "global minimum"),  # a free bias pays the offset: the dead class ties the frame
    (True, 5e-3, "local minimum"),  # a penalized bias: strictly worse, but perturbations return
])
def test_dead_class_status_depends_on_the_bias(bias, lambda_b, status):
    from nclab.theory.ufm import probe_dead_class

    p = probe_dead_class(num_classes=2, per_class=5, lambda_w=5e-3, lambda_h=5e-3, bias=bias, lambda_b=lambda_b,
                         starts=4, trials=4)
    assert p["status"] == status, p
    assert p["dead_converged"] and p["kkt_violation"] == 0.0
    assert p["global_objective"] == pytest.approx(p["closed_form_objective"], rel=1e-9)
    if status != "global minimum":
        assert p["dead_objective"] > p["global_objective"] + 1e-3
