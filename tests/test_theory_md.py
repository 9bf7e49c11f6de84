"""The memorization-dilation model (our reconstruction, paper-notes section 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.seeding import numpy_generator
from nclab.theory.md_model import md_grid, md_sweep, solve_md, error_proxy
from nclab.theory.ufm import closed_form

LW = LH = 5e-3
K = 10


def test_no_noise_gives_the_collapsed_ufm_solution():
    for loss, alpha in (("ce", None), ("ls", 0.1)):
        res = solve_md(eta=0.0, expressivity=0.7, loss=loss, alpha=alpha, per_class=K, lambda_w=LW, lambda_h=LH)
        cf = closed_form(num_classes=2, per_class=K, lambda_w=LW, lambda_h=LH, loss=loss, alpha=alpha)
        assert res.memorization == 0.0 and res.dilation < 1e-9
        assert res.objective == pytest.approx(cf.objective, rel=1e-9)
        assert res.margin == pytest.approx(cf.margin, rel=1e-6)
        assert res.geometry["centre_norm"] == pytest.approx(cf.feature_norm, rel=1e-6)
        assert res.geometry["orthogonal_frame_error"] < 1e-6
        assert res.test_error < 1e-12


@pytest.mark.parametrize("n_cls", [2, 3])
def test_zero_expressivity_recovers_ufm_with_memorized_noise(n_cls):
    res = solve_md(eta=0.2, expressivity=0.0, num_classes=n_cls, per_class=K, lambda_w=LW, lambda_h=LH, seed=1)
    cf = closed_form(num_classes=n_cls, per_class=K, lambda_w=LW, lambda_h=LH)
    # noisy samples are moved onto their label's centre: M = distance between orthogonal-frame centres
    assert res.dilation < 1e-8
    assert res.noisy_fit == 1.0
    assert res.objective == pytest.approx(cf.objective, rel=1e-9)
    assert res.memorization == pytest.approx(math.sqrt(2) * cf.feature_norm, rel=1e-5)
    assert res.margin == pytest.approx(cf.margin, rel=1e-5)


def test_small_expressivity_is_continuous():
    res = solve_md(eta=0.2, expressivity=1e-3, per_class=K, lambda_w=LW, lambda_h=LH, seed=2)
    cf = closed_form(num_classes=2, per_class=K, lambda_w=LW, lambda_h=LH)
    assert res.dilation < 2e-3
    assert res.memorization == pytest.approx(math.sqrt(2) * cf.feature_norm, rel=1e-2)


@pytest.mark.parametrize("loss,alpha", [("ce", None), ("ls", 0.1)])
def test_memorization_and_dilation_grow_with_noise(loss, alpha):
    etas = [0.05, 0.1, 0.2, 0.3, 0.4]
    rows = [solve_md(eta=e, expressivity=0.5, loss=loss, alpha=alpha, starts=3) for e in etas]
    mem = [r.memorization for r in rows]
    dil = [r.dilation for r in rows]
    assert all(b > a for a, b in zip(mem, mem[1:])), mem
    assert all(b > a for a, b in zip(dil, dil[1:])), dil
    # the expressivity constraint is active: r = lambda M
    assert all(abs(d - 0.5 * m) < 1e-6 for m, d in zip(mem, dil))


def _reduced_binary_objective(a, p, x, y, *, eta, lam, alpha):
    """Independent formula for N = 2, d = 2 under the class-swap symmetry (our derivation).

    W = a [[1, -1], [-1, 1]], h_0 = (p, 0), h_1 = (0, p), noisy feature of class 0 = (x, y)
    (class 1: (y, x)), r = lam * ||(x - p, y)||; binary LS(alpha) at gap g is
    log(1 + e^{-g}) + alpha g / 2 (alpha = 0: CE).
    """
    def ell(g):
        return np.logaddexp(0.0, -g) + 0.5 * alpha * g

    r = lam * np.sqrt((x - p) ** 2 + y**2)
    clean = 0.5 * (ell(2 * a * (p + r)) + ell(2 * a * (p - r)))
    noisy = ell(2 * a * (y - x))
    reg = 2 * LW * a**2 + LH * K * ((1 - eta) * (p**2 + r**2) + eta * (x**2 + y**2))
    return (1 - eta) * clean + eta * noisy + reg


def _grid_search(fun, centre, width, *, levels=6, points=25):
    """Brute force: a full grid on a box, then a 3x narrower box around the best point, repeated."""
    centre = np.asarray(centre, dtype=float)
    width = np.asarray(width, dtype=float)
    best = None
    for _ in range(levels):
        axes = [np.clip(np.linspace(c - w, c + w, points), 0.0, None) for c, w in zip(centre, width)]
        grids = np.meshgrid(*axes, indexing="ij")
        vals = fun(*grids)
        i = np.unravel_index(np.argmin(vals), vals.shape)
        centre = np.array([g[i] for g in grids])
        best = float(vals[i])
        width = width / 3.0
    return best, centre


@pytest.mark.parametrize("loss,alpha", [("ce", None), ("ls", 0.2)])
def test_solver_agrees_with_brute_force_grid(loss, alpha):
    eta, lam = 0.2, 0.6
    res = solve_md(eta=eta, expressivity=lam, loss=loss, alpha=alpha, per_class=K, lambda_w=LW, lambda_h=LH)
    fun = lambda a, p, x, y: _reduced_binary_objective(a, p, x, y, eta=eta, lam=lam, alpha=alpha or 0.0)  # noqa: E731
    # first level: the box [0, 4]^4 covers every point the regularizer allows below log 2
    best, (a, p, x, y) = _grid_search(fun, centre=[2.0, 2.0, 2.0, 2.0], width=[2.0] * 4)
    assert res.objective <= best + 1e-9  # the solver is at least as good as brute force
    assert best <= res.objective + 1e-6  # and brute force finds the solver's value
    grid_mem = math.hypot(x - p, y)
    assert res.memorization == pytest.approx(grid_mem, abs=2e-3)
    assert res.dilation == pytest.approx(lam * grid_mem, abs=2e-3)


@pytest.mark.parametrize("noise", ["gaussian", "sphere"])
@pytest.mark.parametrize("dim", [2, 5])
def test_test_error_proxy_exact_matches_monte_carlo(noise, dim):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, dim))
    h = np.abs(rng.normal(size=(2, dim)))
    b = rng.normal(size=2) * 0.1
    a = w[0] - w[1]
    r = abs(a @ h[0]) / np.linalg.norm(a) * 1.3  # radius reaching past the boundary for class 0
    exact, _ = error_proxy(w, h, r, bias=b, noise=noise, method="exact")
    mc, se = error_proxy(w, h, r, bias=b, noise=noise, method="mc", samples=200_000,
                              rng=numpy_generator(0, "test"))
    assert 0.0 < exact < 1.0
    assert abs(exact - mc) < 4 * se + 1e-12


def test_test_error_proxy_limits_and_errors():
    w = np.array([[1.0, -1.0], [-1.0, 1.0]])
    h = np.eye(2)
    assert error_proxy(w, h, 0.0)[0] == 0.0
    # on the sphere, r below the distance to the boundary (1/sqrt 2) gives exactly zero error
    assert error_proxy(w, h, 0.7, noise="sphere")[0] == 0.0
    assert error_proxy(w, h, 0.72, noise="sphere")[0] > 0.0
    with pytest.raises(ValueError, match="radius"):
        error_proxy(w, h, -1.0)
    with pytest.raises(ValueError, match="N = 2"):
        error_proxy(np.eye(3), np.eye(3), 1.0, method="exact")


def test_bad_md_inputs_are_named():
    with pytest.raises(ValueError, match="eta"):
        solve_md(eta=1.0, expressivity=0.5)
    with pytest.raises(ValueError, match="expressivity"):
        solve_md(eta=0.1, expressivity=-1.0)
    with pytest.raises(ValueError, match="test_noise"):
        solve_md(eta=0.1, expressivity=0.5, test_noise="uniform")


def test_other_losses_run_and_report_spread():
    res = solve_md(eta=0.2, expressivity=0.5, loss="focal", gamma=2.0, starts=2)
    d = res.to_dict()
    assert d["loss"] == "focal" and len(res.start_objectives) == 2
    assert d["start_spread"] >= 0.0 and res.memorization > 0 and res.dilation > 0


def test_sweep_serial_rows_in_order_with_progress():
    pts = md_grid(etas=[0.1, 0.3], losses=[("ce", None), ("ls", 0.1)], expressivities=[0.5], starts=2)
    seen = []
    rows = md_sweep(pts, progress=lambda done, total: seen.append((done, total)))
    assert [(r["loss"], r["eta"]) for r in rows] == [("ce", 0.1), ("ce", 0.3), ("ls", 0.1), ("ls", 0.3)]
    assert seen[-1] == (4, 4)


@pytest.mark.slow
def test_parallel_sweep_matches_serial():
    pts = md_grid(etas=[0.1, 0.3], losses=[("ce", None)], expressivities=[0.5], starts=2)
    serial = md_sweep(pts)
    parallel = md_sweep(pts, workers=2)
    for a, b in zip(serial, parallel):
        assert a["memorization"] == b["memorization"] and a["objective"] == b["objective"]
