"""The study report from a small fabricated store: every figure is a real PNG, the tables hold
the numbers, and the claims follow the data (a planted trend flips the verdict)."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.report.study_data import check_claims, fit_line, load_records
from nclab.store.index import Owner, RunStore

PNG = b"\x89PNG\r\n\x1a\n"


def _fabricate(root, *, ls_dilates_less: bool = True):
    """CE/LS x 3 rates x 3 seeds x 2 datasets, + latent runs; dilation = a + b*memorization."""
    st = RunStore(root)
    rng = np.random.default_rng(0)
    o = Owner()
    for ds in ("digits", "fashion-mnist"):
        for loss in ("ce", "ls"):
            slope = (0.3 if loss == "ls" else 0.8) if ls_dilates_less else (0.8 if loss == "ls" else 0.3)
            for rate in (0.0, 0.2, 0.4):
                for seed in range(3):
                    for latent in (0.0, 0.25) if rate == 0.2 else (0.0,):
                        mem = 0.2 + 2 * rate + 0.05 * rng.standard_normal()
                        dil = 0.1 + slope * mem + 0.01 * rng.standard_normal()
                        cfg = {"seed": seed, "dataset": {"name": ds}, "loss": {"name": loss},
                               "noise": {"kind": "symmetric", "rate": rate, "latent_fraction": latent}}
                        h = f"{ds}-{loss}-{rate}-{seed}-{latent}"
                        st.register([{"hash": h, "name": h, "config": cfg}])
                        st.claim(h, o)
                        st.complete(h, o, {
                            "test_acc": 0.95 - rate * (0.3 if loss == "ce" else 0.2) + 0.01 * seed,
                            "train.memorization_normalized": mem, "train.dilation_normalized": dil,
                            "test.dilation_normalized": dil * 1.1,
                            "train.nc1": 0.01 + rate, "train.nc2_orthogonal_error_means": 0.02 + rate / 10,
                            "train.nc2_etf_error_means": 0.5, "train.realized_noise_rate": rate,
                        })
    # a failed run and a pending run must not enter the report
    st.register([{"hash": "bad", "name": "bad", "config": {"dataset": {"name": "digits"}}},
                 {"hash": "todo", "name": "todo", "config": {}}])
    st.claim("bad", o)
    st.fail("bad", o, "boom")
    return st


def test_report_builds_with_valid_pngs_tables_and_data_driven_claims(tmp_path):
    import matplotlib.image as mpimg

    from nclab.report import build_report

    _fabricate(tmp_path / "s")
    rep = build_report(tmp_path / "s")
    assert len(rep.figures) == 6  # 3 per dataset
    for f in rep.figures:
        data = f.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    md = rep.markdown.read_text()
    html = rep.html.read_text()
    for f in rep.figures:
        assert f"figures/{f.name}" in md
    assert html.count("data:image/png;base64,") == 6 and "<img" in html and "src='figures" not in html
    assert "**H1 — HELD.**" in md and "**H2 — HELD.**" in md and "**H3 — HELD.**" in md
    assert "Latent-class variant" in md
    assert "48 completed runs (1 failed, 1 not finished" in md
    assert "bad" not in {r["hash"] for r in load_records(tmp_path / "s")}
    # the table holds the plotted numbers: digits CE at rate 0.4 test accuracy mean over seeds 0..2
    assert "| ce | 0.4 | 3 | 0.84 ± 0.01 |" in md


def test_claims_follow_the_data(tmp_path):
    _fabricate(tmp_path / "s", ls_dilates_less=False)
    claims = {c.key: c for c in check_claims(load_records(tmp_path / "s"))}
    assert claims["H1"].held is True
    assert claims["H2"].held is False  # LS was planted with the steeper slope
    assert "LS has a lower M-D slope: 0/2" in claims["H2"].summary


def test_fit_line_recovers_a_line():
    x = np.linspace(0, 1, 20)
    f = fit_line(x, 0.5 + 2 * x)
    assert f["slope"] == pytest.approx(2) and f["intercept"] == pytest.approx(0.5) and f["r2"] == pytest.approx(1)
    assert np.isnan(fit_line(np.ones(5), np.arange(5.0))["slope"])  # no spread in x: no fit


def test_report_on_empty_store_is_a_clear_error(tmp_path):
    from nclab.report import build_report

    RunStore(tmp_path)
    with pytest.raises(ValueError, match="no completed runs"):
        build_report(tmp_path)


def test_report_adds_feature_panels_from_saved_features(tmp_path):
    from nclab.report import build_report

    st = _fabricate(tmp_path / "s")
    rng = np.random.default_rng(1)
    for loss in ("ce", "ls"):  # digits, rate 0.2, seed 0: give both runs saved features
        yc = np.repeat([0, 1], 50)
        y = yc.copy()
        y[:5] = 1
        x = np.abs(np.eye(2)[yc] * 3 + rng.normal(size=(100, 2)) * 0.3)
        d = st.run_dir(f"digits-{loss}-0.2-0-0.0")
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "features.npz", features=x, labels=y, clean_labels=yc, W=np.eye(2), b=np.zeros(2))
    rep = build_report(tmp_path / "s")
    panels = [f for f in rep.figures if "_features_" in f.name]
    assert sorted(p.name for p in panels) == ["digits_features_ce.png", "digits_features_ls.png"]
    assert all(p.read_bytes().startswith(PNG) for p in panels)
    assert "digits_features_ce.png" in rep.markdown.read_text()
