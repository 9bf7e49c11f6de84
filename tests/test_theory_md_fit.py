"""Fitting the soft-constraint M-D model to CE targets and predicting LS ratios (nclab.theory.md_fit)."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.theory.md_fit import fit_lambda, model_curves, ratios, refine, tabulate

ETAS = (0.05, 0.15)


@pytest.fixture(scope="module")
def table():
    return refine(tabulate(ETAS, (0.15, 0.35, 0.8), alpha=0.1), 0.35, parts=3)


def test_fit_recovers_lambda_and_scale_from_the_models_own_outputs(table):
    ce = model_curves(ETAS, expressivity=0.3, loss="ce")
    m = 1.4 * np.array([c["memorization"] for c in ce])
    d = 1.4 * np.array([c["dilation"] for c in ce])
    # three target sets at once: complete, one cell missing, none
    tm = np.stack([m, [m[0], np.nan], [np.nan, np.nan]])
    td = np.stack([d, [d[0], np.nan], [np.nan, np.nan]])
    lam, scale, resid = fit_lambda(table, tm, td)
    assert lam[0] == pytest.approx(0.3, rel=0.03) and scale[0] == pytest.approx(1.4, rel=0.02)
    assert lam[1] == pytest.approx(0.3, rel=0.05)  # one cell still pins D/M, hence lambda
    assert np.isnan(lam[2]) and np.isnan(scale[2]) and resid[0] < 1e-3
    # the LS ratios at the fitted lambda match the model's own LS/CE ratios
    ls = model_curves(ETAS, expressivity=0.3, loss="ls", alpha=0.1)
    pred = ratios(table, float(lam[0]))
    for j in range(len(ETAS)):
        assert pred["memorization"][j] == pytest.approx(ls[j]["memorization"] / ce[j]["memorization"], abs=5e-3)
        assert pred["dilation"][j] == pytest.approx(ls[j]["dilation"] / ce[j]["dilation"], abs=5e-3)
    assert ratios(table, lam[:2])["dm"].shape == (2, len(ETAS))


def test_hard_constraint_makes_the_dm_ratio_one_by_construction_soft_does_not():
    hard = tabulate((0.1,), (0.3, 0.6), alpha=0.1, constraint="hard")
    soft = tabulate((0.1,), (0.3, 0.6), alpha=0.1, constraint="soft")
    for lam in (0.3, 0.6):
        assert ratios(hard, lam)["dm"][0] == pytest.approx(1.0, abs=1e-4)  # D = lambda M for every loss
        assert abs(ratios(soft, lam)["dm"][0] - 1.0) > 0.01


def test_bad_inputs_are_named(table):
    with pytest.raises(ValueError, match="lambdas"):
        tabulate(ETAS, (0.3,), alpha=0.1)
    with pytest.raises(ValueError, match="etas"):
        tabulate((0.0, 0.1), (0.3, 0.6), alpha=0.1)
    with pytest.raises(ValueError, match="targets must have shape"):
        fit_lambda(table, np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="parts"):
        refine(table, 0.3, parts=1)
