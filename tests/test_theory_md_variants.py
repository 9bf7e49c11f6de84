"""M-D model: non-negative features, the soft expressivity variant, the CLI table and JSON."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from nclab.theory import md_model
from nclab.theory._md_numpy import MDObjective
from nclab.theory._solver import resolve_loss, single_torch_thread, torch_fg
from nclab.theory.md_model import _torch_parts, solve_md

LW = LH = 5e-3
K = 10


@pytest.mark.parametrize("loss,alpha", [("ce", None), ("ls", 0.1), ("ls", 0.3)])
@pytest.mark.parametrize("constraint", ["hard", "soft"])
def test_every_modeled_feature_is_non_negative(loss, alpha, constraint):
    for lam in (0.25, 1.0, 2.0):
        for eta in (0.0, 0.1, 0.4):
            res = solve_md(eta=eta, expressivity=lam, loss=loss, alpha=alpha, starts=1, constraint=constraint)
            d = res.to_dict()
            assert d["min_feature"] >= 0.0
            # literally: the clean spread points h_c +/- r e_j and the noisy features
            pts = res.centres[:, None, :] - res.dilation * np.eye(res.centres.shape[1])[None]
            assert pts.min() >= 0.0 and res.noisy_features.min() >= 0.0


def test_multiclass_features_stay_non_negative():
    res = solve_md(eta=0.3, expressivity=1.0, num_classes=3, starts=1, mc_samples=2000)
    assert res.to_dict()["min_feature"] >= 0.0 and res.dilation > 0


def test_hard_constraint_binds_and_reports_zero_slack():
    d = solve_md(eta=0.2, expressivity=0.5, starts=2).to_dict()
    assert d["constraint"] == "hard" and d["constraint_binds"] is True
    assert abs(d["expressivity_slack"]) < 1e-9 and d["dm_ratio"] == pytest.approx(0.5)
    d0 = solve_md(eta=0.0, expressivity=0.5, starts=1).to_dict()
    assert d0["constraint_binds"] is False  # no noisy samples: nothing to bind


@pytest.mark.parametrize("loss,alpha", [("ce", None), ("ls", 0.1)])
def test_soft_variant_tends_to_the_hard_one_as_penalty_grows(loss, alpha):
    kw = dict(eta=0.2, expressivity=0.5, loss=loss, alpha=alpha, starts=2, seed=1)
    hard = solve_md(**kw)
    gaps = []
    for mu in (10.0, 100.0, 1000.0):
        soft = solve_md(**kw, constraint="soft", penalty=mu)
        assert soft.objective <= hard.objective + 1e-9  # a relaxation
        assert soft.dilation <= 0.5 * soft.memorization + 1e-9  # the cost only pulls r up to lambda M
        gaps.append((hard.objective - soft.objective, abs(soft.dilation - hard.dilation)))
    assert gaps[0][0] > gaps[1][0] > gaps[2][0] and gaps[0][1] > gaps[1][1] > gaps[2][1]
    assert gaps[2][0] < 1e-3 * hard.objective and gaps[2][1] < 2e-3


def test_soft_variant_lets_the_dm_ratio_depend_on_the_loss():
    kw = dict(eta=0.2, expressivity=0.5, starts=2, constraint="soft", penalty=1.0)
    ce, ls = solve_md(**kw), solve_md(**kw, loss="ls", alpha=0.2)
    assert ce.to_dict()["expressivity_slack"] < 0 and ls.to_dict()["constraint_binds"]
    assert ce.to_dict()["dm_ratio"] != pytest.approx(ls.to_dict()["dm_ratio"], rel=1e-2)


@pytest.mark.parametrize("loss,params", [("ce", {}), ("ls", {"alpha": 0.15}), ("focal", {"gamma": 2.0})])
@pytest.mark.parametrize("n_cls,dim,eta,bias", [(2, 2, 0.2, False), (3, 4, 0.3, True), (2, 2, 0.0, False)])
def test_soft_numpy_objective_and_gradient_equal_torch(loss, params, n_cls, dim, eta, bias):
    choice = resolve_loss(loss, **params)
    prob = MDObjective(num_classes=n_cls, per_class=K, dim=dim, eta=eta, expressivity=0.7, lambda_w=LW,
                       lambda_h=LH, bias=bias, lambda_b=0.01, loss=choice, constraint="soft", penalty=3.0)
    tparts = _torch_parts(prob, choice)
    tfg = torch_fg(lambda t: tparts(t)[0])
    rng = np.random.default_rng(5)
    lo = prob.nw + prob.nb
    with single_torch_thread():
        for scale in (0.3, 1.5):
            x = rng.normal(0.0, scale, prob.size)
            x[lo:] = np.abs(x[lo:])
            x[-1] = 0.05  # r below lambda M: the penalty is active
            f_np, g_np = prob.fg(x)
            f_t, g_t = tfg(x)
            assert f_np == pytest.approx(f_t, rel=1e-10)
            np.testing.assert_allclose(g_np, g_t, rtol=1e-9, atol=1e-12 * np.abs(g_t).max())


def test_bad_constraint_inputs_are_named():
    with pytest.raises(ValueError, match="constraint"):
        solve_md(eta=0.1, expressivity=0.5, constraint="medium")
    with pytest.raises(ValueError, match="penalty"):
        solve_md(eta=0.1, expressivity=0.5, constraint="soft", penalty=0.0)


def _app():
    from nclab.cli import theory

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so "theory" stays a subcommand
        pass

    theory.register(app)
    return app


def test_cli_md_json_has_min_feature_and_binding(tmp_path):
    res = CliRunner().invoke(_app(), ["theory", "md", "--etas", "0,0.2", "--alphas", "0.1", "--starts", "1",
                                      "--constraint", "soft", "--penalty", "5", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output[res.output.index("["):])
    assert len(rows) == 4
    for r in rows:
        assert r["min_feature"] >= 0.0 and r["constraint"] == "soft"
        assert {"constraint_binds", "expressivity_slack", "dm_ratio"} <= set(r)


def test_cli_md_table_wraps_at_80_columns_with_distinct_headers(tmp_path):
    res = CliRunner().invoke(_app(), ["theory", "md", "--etas", "0.1", "--alphas", "0.1", "--starts", "1",
                                      "--out", str(tmp_path)], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in res.output  # nothing truncated
    for head in ("loss fn", "train loss", "min feat", "binds", "start spread"):
        assert head in res.output
    header_lines = [line for line in lines if "loss fn" in line]
    assert header_lines
    for line in header_lines:
        names = [n for n in re.split(r"\s{2,}", line.strip()) if n]
        assert "loss" not in names and len(names) == len(set(names)), names


def test_dm_slopes_equal_lambda_under_the_hard_constraint_only():
    pts = md_model.md_grid(etas=[0.0, 0.1, 0.3], losses=[("ce", None), ("ls", 0.2)], expressivities=[0.5], starts=1)
    hard = md_model.dm_slopes(md_model.md_sweep(pts))
    assert [s["loss_label"] for s in hard] == ["ce", "ls(0.2)"] and all(s["n"] == 2 for s in hard)
    assert all(s["slope"] == pytest.approx(0.5, rel=1e-6) for s in hard)
    soft = md_model.dm_slopes(md_model.md_sweep([{**p, "constraint": "soft", "penalty": 1.0} for p in pts]))
    assert soft[0]["slope"] != pytest.approx(soft[1]["slope"], rel=1e-2)
