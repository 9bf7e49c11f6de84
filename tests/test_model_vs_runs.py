"""The study report's model-vs-runs section on fabricated runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nclab.report.model_vs_runs import bootstrap_mean_ci, run_points, section
from nclab.theory.md_fit import model_curves

RATES = [0.0, 0.2, 0.4]


def _rows(*, seeds=4, ds="digits", drop=()):
    """Runs drawn around the model's own curves (lambda 0.7, scale 1.2) with seeded jitter."""
    rng = np.random.default_rng(0)
    rows = []
    for loss, alpha in (("ce", None), ("ls", 0.1)):
        cur = model_curves(RATES, expressivity=0.7, loss=loss, alpha=alpha, starts=1)
        for c in cur:
            for s in range(seeds):
                row = {"dataset": ds, "variant": "main", "loss": loss, "rate": c["eta"], "seed": s, "classes": 2,
                       "noise_kind": "symmetric", "memorization": 1.2 * c["memorization"] + rng.normal(0, 0.01),
                       "dilation": 1.2 * c["dilation"] + rng.normal(0, 0.01),
                       "test_acc": 1 - (0.03 + 0.4 * c["proxy"] + rng.normal(0, 0.002)),
                       "_keys": {"memorization": "train.memorization_normalized",
                                 "dilation": "train.dilation_normalized"}}
                if c["eta"] == 0:
                    row["memorization"] = None
                for k in drop:
                    row.pop(k, None)
                rows.append(row)
    return rows


FAST = {"grid": 5, "xtol": 1e-2, "starts": 1}


def test_section_writes_the_figure_and_a_table(tmp_path):
    text, summary = section(_rows(), tmp_path, fit_options=FAST, n_boot=300)
    fig = tmp_path / "figures" / "model_vs_runs.png"
    assert fig.is_file() and fig.stat().st_size > 10_000
    assert summary["figure"] == "figures/model_vs_runs.png" and "](figures/model_vs_runs.png)" in text
    assert "| noise rate | quantity | LS predicted |" in text
    (ds,) = summary["datasets"]
    assert ds["dataset"] == "digits" and ds["fit"]["expressivity"] == pytest.approx(0.7, rel=0.1)
    assert ds["compared"] == 7  # M, D at rates 0.2, 0.4 and the error at 0, 0.2, 0.4
    assert ds["inside"] >= 3  # the model generated the data: most predictions fall in the interval
    for c in ds["cells"]:
        assert c["ci"][0] <= c["measured"] <= c["ci"][1]
    json.dumps(summary)  # JSON-ready
    assert any("LS alpha not in the rows" in m for m in summary["missing"])


def test_section_reports_what_is_missing_without_raising(tmp_path):
    rows = _rows(seeds=2, drop=("dilation",))
    text, summary = section(rows, tmp_path, fit_options=FAST, n_boot=100)
    assert summary["datasets"] == [] and summary["figure"] is None
    assert any("normalized dilation" in m for m in summary["missing"])
    assert any("model not fitted" in m for m in summary["missing"])
    assert "Missing or skipped" in text and "no comparison" in text


def test_raw_values_are_not_compared_and_ls_only_datasets_are_named(tmp_path):
    rows = [r for r in _rows(seeds=2, ds="solo") if r["loss"] == "ls"]
    _, summary = section(rows, tmp_path, fit_options=FAST)
    assert any("solo: no CE runs" in m for m in summary["missing"])
    raw = _rows(seeds=1)[3]
    raw["_keys"] = {"memorization": "train.memorization", "dilation": "train.dilation"}
    pts, _ = run_points([raw, {"loss": "ce"}])
    assert pts[0]["memorization"] is None and pts[0]["dilation"] is None and len(pts) == 1


def test_symmetric_all_rate_becomes_the_mislabeled_fraction():
    pts, missing = run_points([{"dataset": "x", "loss": "ce", "rate": 0.4, "classes": 10,
                                "noise_kind": "symmetric_all", "test_acc": 0.9}])
    assert pts[0]["eta"] == pytest.approx(0.36) and pts[0]["test_error"] == pytest.approx(0.1)
    assert any("realized_rate" in m for m in missing)


def test_bootstrap_interval_contains_the_mean_and_needs_two_values():
    rng = np.random.default_rng(1)
    lo, hi = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0], rng=rng)
    assert lo < 2.5 < hi
    assert bootstrap_mean_ci([1.0], rng=rng) is None
