"""Fitting the M-D model to CE runs and predicting LS (nclab.theory.md_fit)."""

from __future__ import annotations

import pytest

from nclab.theory.md_fit import fit_md, model_curves, predict_md

ETAS = [0.0, 0.1, 0.2, 0.4]


def _synthetic(lam, *, scale, offset, slope, loss="ce", alpha=None, seeds=2):
    cur = model_curves(ETAS, expressivity=lam, loss=loss, alpha=alpha, starts=2)
    return [{"eta": c["eta"], "memorization": scale * c["memorization"], "dilation": scale * c["dilation"],
             "test_error": offset + slope * c["proxy"], "seed": s} for c in cur for s in range(seeds)]


def test_fit_recovers_a_known_lambda_scale_and_calibration():
    rows = _synthetic(0.8, scale=1.3, offset=0.02, slope=0.5)
    fit = fit_md(rows, grid=8)
    assert fit.expressivity == pytest.approx(0.8, rel=1e-2)
    assert fit.scale == pytest.approx(1.3, rel=1e-2)
    assert fit.err_offset == pytest.approx(0.02, abs=1e-3) and fit.err_slope == pytest.approx(0.5, rel=1e-2)
    assert fit.etas == [0.1, 0.2, 0.4] and fit.n_runs == len(rows)
    # predicting LS from the CE fit reproduces the model's own LS curve
    truth = _synthetic(0.8, scale=1.3, offset=0.02, slope=0.5, loss="ls", alpha=0.1, seeds=1)
    pred = predict_md(fit, [0.1, 0.4], loss="ls", alpha=0.1)
    for p in pred:
        t = next(r for r in truth if r["eta"] == p["eta"])
        assert p["memorization"] == pytest.approx(t["memorization"], rel=2e-2)
        assert p["dilation"] == pytest.approx(t["dilation"], rel=2e-2)
        assert p["test_error"] == pytest.approx(t["test_error"], rel=5e-2, abs=1e-3)


def test_fit_needs_two_noisy_rates_and_valid_etas():
    rows = [{"eta": 0.2, "memorization": 0.7, "dilation": 0.3}]
    with pytest.raises(ValueError, match=">= 2 noise rates"):
        fit_md(rows)
    with pytest.raises(ValueError, match="eta"):
        fit_md([{"eta": 1.5, "memorization": 1.0, "dilation": 1.0}] * 2)
    with pytest.raises(ValueError, match="lambda_range"):
        fit_md(rows, lambda_range=(2.0, 1.0))


def test_non_increasing_error_data_gives_a_flat_calibration():
    rows = _synthetic(0.5, scale=1.0, offset=0.0, slope=0.0)
    for r in rows:
        r["test_error"] = 0.3 - r["eta"] * 0.1  # error falling with noise: no positive map exists
    fit = fit_md(rows, grid=5, xtol=1e-2)
    assert fit.err_slope == 0.0 and 0.25 < fit.err_offset < 0.3
