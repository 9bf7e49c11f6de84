"""The memorization-dilation model (our reconstruction, docs/theory-md-model.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.seeding import numpy_generator
from nclab.theory import md_model
from nclab.theory._md_numpy import MDObjective
from nclab.theory._solver import resolve_loss, single_torch_thread, torch_fg
from nclab.theory.md_model import _torch_parts, md_grid, md_sweep, solve_md, error_proxy
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

    W = a [[1, -1], [-1, 1]], unshifted centres g_0 = (p, 0), g_1 = (0, p), unshifted noisy
    feature of class 0 = (x, y) (class 1: (y, x)), r = lam * ||(x - p, y)||; the positivity
    shift adds r to every coordinate (h_0 = (p + r, r), f = (x + r, y + r)): logit-neutral
    since W 1 = 0, so it only enters the regularizer. Binary LS(alpha) at gap g is
    log(1 + e^{-g}) + alpha g / 2 (alpha = 0: CE).
    """
    def ell(g):
        return np.logaddexp(0.0, -g) + 0.5 * alpha * g

    r = lam * np.sqrt((x - p) ** 2 + y**2)
    clean = 0.5 * (ell(2 * a * (p + r)) + ell(2 * a * (p - r)))
    noisy = ell(2 * a * (y - x))
    reg = 2 * LW * a**2 + LH * K * ((1 - eta) * ((p + r) ** 2 + 2 * r**2) + eta * ((x + r) ** 2 + (y + r) ** 2))
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
    parallel = md_sweep(pts, workers=2, serial_seconds=0.0)  # force the pool for the second point
    for a, b in zip(serial, parallel):
        assert a["memorization"] == b["memorization"] and a["objective"] == b["objective"]


def _objectives(loss, params, *, n_cls, dim, eta, bias):
    choice = resolve_loss(loss, **params)
    prob = MDObjective(num_classes=n_cls, per_class=K, dim=dim, eta=eta, expressivity=0.7, lambda_w=LW,
                       lambda_h=LH, bias=bias, lambda_b=0.01, loss=choice)
    tparts = _torch_parts(prob, choice)
    return prob, torch_fg(lambda t: tparts(t)[0]), tparts


@pytest.mark.parametrize("loss,params", [("ce", {}), ("ls", {"alpha": 0.15}), ("focal", {"gamma": 2.0}),
                                         ("lr", {"alpha": 0.1})])
@pytest.mark.parametrize("n_cls,dim,eta,bias", [(2, 2, 0.2, False), (2, 2, 0.0, False), (3, 5, 0.3, True),
                                                (4, 4, 0.1, False)])
def test_numpy_objective_and_gradient_equal_torch_autograd(loss, params, n_cls, dim, eta, bias):
    prob, tfg, tparts = _objectives(loss, params, n_cls=n_cls, dim=dim, eta=eta, bias=bias)
    rng = np.random.default_rng(n_cls * 100 + dim)
    lo = prob.nw + prob.nb
    # single torch thread: its pool costs ~0.1 s per tiny op on a loaded machine
    with single_torch_thread():
        for scale in (0.3, 1.0, 4.0):  # large scale: saturated softmax (the log1p branch matters)
            x = rng.normal(0.0, scale, prob.size)
            x[lo:] = np.abs(x[lo:])
            f_np, g_np = prob.fg(x)
            f_t, g_t = tfg(x)
            assert f_np == pytest.approx(f_t, rel=1e-10)
            assert np.linalg.norm(g_np - g_t) <= 1e-10 * np.linalg.norm(g_t)
            np.testing.assert_allclose(g_np, g_t, rtol=1e-10, atol=1e-12 * np.abs(g_t).max())
            with md_model.torch.no_grad():
                ref = [float(v) for v in tparts(md_model.torch.from_numpy(x))]
            np.testing.assert_allclose(prob.parts(x), ref, rtol=1e-10, atol=1e-300)


def test_numpy_gradient_matches_finite_differences():
    # guards the shared forward too: central differences are independent of both backward passes
    prob, _, _ = _objectives("ls", {"alpha": 0.2}, n_cls=3, dim=3, eta=0.25, bias=True)
    rng = np.random.default_rng(7)
    x = np.abs(rng.normal(0.0, 0.8, prob.size))
    _, g = prob.fg(x)
    eps = 1e-6
    fd = np.array([(prob.fg(x + eps * e)[0] - prob.fg(x - eps * e)[0]) / (2 * eps) for e in np.eye(prob.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("eta,alpha,lam", [(0.1, None, 0.5), (0.3, 0.1, 1.0), (0.2, 0.3, 0.5), (0.05, 0.2, 0.25)])
def test_solve_md_numpy_and_torch_backends_agree(eta, alpha, lam):
    loss = "ce" if alpha is None else "ls"
    kw = dict(eta=eta, expressivity=lam, loss=loss, alpha=alpha, starts=2, seed=3)
    fast = solve_md(**kw)  # auto: the numpy path for CE / LS
    ref = solve_md(**kw, backend="torch")
    assert fast.converged and ref.converged
    for key in ("memorization", "dilation", "objective", "training_loss", "test_error", "margin"):
        assert getattr(fast, key) == pytest.approx(getattr(ref, key), rel=1e-6, abs=1e-9), key
    np.testing.assert_allclose(fast.start_objectives, ref.start_objectives, rtol=1e-8)


def test_numpy_path_keeps_zero_dilation_exact_without_noise():
    # at r = 0 the +e_j / -e_j contributions to the slack's gradient cancel exactly, so the slack
    # stays on its bound as with autograd (a rounding residue once gave D = 5e-23 here)
    for loss, alpha in (("ce", None), ("ls", 0.3)):
        res = solve_md(eta=0.0, expressivity=1.0, loss=loss, alpha=alpha, starts=2)
        assert res.dilation == 0.0 and res.converged


def test_auto_backend_uses_numpy_for_ce_ls_and_torch_otherwise(monkeypatch):
    calls = []
    real = md_model.torch_fg
    monkeypatch.setattr(md_model, "torch_fg", lambda obj: calls.append(1) or real(obj))
    solve_md(eta=0.1, expressivity=0.5, loss="ls", alpha=0.1, starts=1)
    assert calls == []
    solve_md(eta=0.1, expressivity=0.5, loss="focal", gamma=1.0, starts=1)
    assert calls == [1]
    with pytest.raises(ValueError, match="backend"):
        solve_md(eta=0.1, expressivity=0.5, backend="jax")


def test_generic_numpy_path_solves_other_losses_like_torch():
    kw = dict(eta=0.2, expressivity=0.5, loss="focal", gamma=2.0, starts=1, seed=4)
    fast, ref = solve_md(**kw, backend="numpy"), solve_md(**kw, backend="torch")
    assert fast.objective == pytest.approx(ref.objective, rel=1e-8)
    assert fast.memorization == pytest.approx(ref.memorization, rel=1e-6)


def test_small_parallel_sweep_stays_serial(monkeypatch):
    def no_pool(*a, **k):
        raise AssertionError("a process pool was spawned for a sweep that takes well under a second")

    monkeypatch.setattr(md_model, "ProcessPoolExecutor", no_pool)
    pts = md_grid(etas=[0.1, 0.2], losses=[("ce", None)], expressivities=[0.5], starts=1)
    rows = md_sweep(pts, workers=2)
    assert [r["eta"] for r in rows] == [0.1, 0.2]
    with pytest.raises(ValueError, match="serial_seconds"):
        md_sweep(pts, workers=2, serial_seconds=-1.0)
