"""The study report from small fabricated stores: real PNGs, tables with the numbers,
three-valued claims that follow the data, eligibility (non-terminal and diverged runs listed,
not used), `--json`, and no verdict from a store that is not a study or has 2 runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from nclab.report.study_data import decide_claims, fit_line, load_records
from nclab.store.index import Owner, RunStore

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_model_fit(monkeypatch):
    """The model-vs-runs section (fits the M-D model; tested with its own module) is replaced
    by a stub here: these tests are about the report's own content."""
    import nclab.report.study_report as sr

    monkeypatch.setattr(sr, "_model_vs_runs", lambda rows, out: ("## Model vs runs\n\nstub with %d runs" % len(rows),
                                                                 {"n_rows": len(rows)}))


def _cli(args):
    from nclab.cli.sweep import register

    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:
        pass

    return CliRunner().invoke(app, args)


def _put(st, o, h, cfg, final, *, outcome="completed"):
    st.register([{"hash": h, "name": h, "config": cfg}], sweep="md-small" if cfg.get("_study", True) else None)
    st.claim(h, o)
    st.complete(h, o, final, outcome=outcome)


def _fabricate(root, *, ls_dilates_less: bool = True, seeds: int = 6, study: bool = True):
    """CE/LS x 3 rates x seeds x 2 datasets; dilation = a + b*memorization (+ noise)."""
    st = RunStore(root)
    rng = np.random.default_rng(0)
    o = Owner()
    for ds in ("digits", "fashion-mnist"):
        for seed in range(seeds):
            for rate in (0.0, 0.2, 0.4):
                mem = 0.2 + 2 * rate + 0.05 * rng.standard_normal()
                for loss in ("ce", "ls"):
                    slope = (0.3 if loss == "ls" else 0.8) if ls_dilates_less else (0.8 if loss == "ls" else 0.3)
                    dil = 0.1 + slope * mem + 0.01 * rng.standard_normal()
                    cfg = {"seed": seed, "dataset": {"name": ds, "classes": 2}, "loss": {"name": loss},
                           "noise": {"kind": "symmetric_all", "rate": rate}, "stop": {"train_acc": 0.999, "patience": 5},
                           "_study": study}
                    _put(st, o, f"{ds}-{loss}-{rate}-{seed}", cfg, {
                        "test_acc": 0.95 - rate * (0.3 if loss == "ce" else 0.2) + 0.01 * seed,
                        "train_acc_noisy": 1.0, "terminal_epoch": 100 + seed, "stop_reason": "terminal",
                        "train.memorization_normalized": mem, "train.dilation_normalized": dil,
                        "train.clean_centroid_distance": 2.0, "test.dilation": 2.0 * dil * 1.1,
                        "test.dilation_normalized": 99.0,  # the unstable test-centroid scale: must not be used
                        "train.nc1": 0.01 + rate, "train.nc2_orthogonal_error_means": 0.02 + rate / 10,
                        "train.nc2_etf_error_means": 0.15617, "train.realized_noise_rate": rate / 2,
                    })
    # a run that never reached the terminal phase and a diverged one: listed, never used
    cfg = {"seed": 99, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": "ce"},
           "noise": {"kind": "symmetric_all", "rate": 0.4}, "stop": {"train_acc": 0.999, "patience": 5}, "_study": study}
    _put(st, o, "never", cfg, {"test_acc": 0.1, "train_acc_noisy": 0.97, "terminal_epoch": None, "stop_reason": "epochs",
                               "train.memorization_normalized": 50.0, "train.dilation_normalized": 50.0, "epoch": 200})
    _put(st, o, "nan", {**cfg, "seed": 98}, {"test_acc": 0.5, "terminal_epoch": 3}, outcome="diverged")
    # a failed run and a pending run must not enter the report
    st.register([{"hash": "bad", "name": "bad", "config": {"dataset": {"name": "digits"}}},
                 {"hash": "todo", "name": "todo", "config": {}}])
    st.claim("bad", o)
    st.fail("bad", o, "boom")
    return st


def test_report_builds_with_pngs_tables_and_claims(tmp_path):
    import matplotlib.image as mpimg

    from nclab.report import build_report

    _fabricate(tmp_path / "s")
    rep = build_report(tmp_path / "s")
    assert len(rep.figures) == 6  # 3 per dataset
    for f in rep.figures:
        assert f.read_bytes().startswith(PNG)
        assert mpimg.imread(f).shape[0] > 100
    md, html = rep.markdown.read_text(), rep.html.read_text()
    assert html.count("data:image/png;base64,") == 6
    claims = {c["id"]: c for c in rep.summary["claims"]}
    assert claims["H1-ce"]["verdict"] == "held" and claims["H1-ls"]["verdict"] == "held"
    assert claims["H2-dilation"]["verdict"] == "held" and claims["H2-slope"]["verdict"] == "held"
    assert claims["H2-test-acc"]["verdict"] == "held" and claims["H2-test-dilation"]["verdict"] == "held"
    for c in claims.values():
        assert set(c) >= {"id", "verdict", "estimate", "ci", "n_pairs"}
    assert claims["H2-dilation"]["n_pairs"] == 24  # 2 datasets x 2 noisy rates x 6 seeds
    assert claims["H3-bias"]["verdict"] == "insufficient data"  # no features saved
    runs = rep.summary["runs"]
    assert runs == {"completed": 74, "eligible": 72, "not_terminal": 1, "diverged": 1, "failed": 1, "unfinished": 1}
    assert {e["hash"] for e in rep.summary["excluded_runs"]} == {"never", "nan"}
    assert "Runs left out of the verdicts" in md and "| never | digits | ce | 0.4 | 99 | not terminal |" in md
    assert "| H2-dilation | held |" in md
    # table: digits CE at rate 0.4, test accuracy mean over seeds 0..5 (eligible runs only)
    assert "| ce | 0.4 | 6 | 0.855 ± 0.019 |" in md  # 0.95 - 0.12 + 0.01 * mean(0..5)
    # N = 2: no simplex-ETF column; the test-centroid normalization is not used
    assert "simplex-ETF" not in md and "| 99 ± 0 |" not in md
    assert (rep.out_dir / "summary.json").exists()
    # the model-vs-runs section gets the eligible runs only
    assert rep.summary["model_vs_runs"] == {"n_rows": 72} and "## Model vs runs" in md


def test_claims_follow_the_data(tmp_path):
    _fabricate(tmp_path / "s", ls_dilates_less=False)
    claims = {c.id: c for c in decide_claims(load_records(tmp_path / "s"))}
    assert claims["H2-slope"].verdict == "did not hold" and claims["H2-dilation"].verdict == "did not hold"
    assert claims["H2-slope"].ci[0] > 0


def test_test_dilation_uses_the_training_scale(tmp_path):
    _fabricate(tmp_path / "s", seeds=1)
    r = next(r for r in load_records(tmp_path / "s") if r["hash"] == "digits-ce-0.2-0")
    assert r["test_dilation"] == pytest.approx(r["test_dilation_raw"] / 2.0)
    assert r["test_dilation_testnorm"] == 99.0 and r["etf_error"] is None
    assert r["eligible"] and r["status"] == "terminal"


def test_two_run_store_gives_no_held_or_not_held(tmp_path):
    st = RunStore(tmp_path / "s")
    o = Owner()
    for loss in ("ce", "ls"):
        cfg = {"seed": 0, "dataset": {"name": "digits"}, "loss": {"name": loss}, "noise": {"kind": "symmetric", "rate": 0.2},
               "_study": True}
        _put(st, o, loss, cfg, {"test_acc": 0.51 if loss == "ce" else 0.513, "train_acc_noisy": 1.0,
                                "train.memorization_normalized": 1.0, "train.dilation_normalized": 0.5})
    res = _cli(["report", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["claims"] and all(c["verdict"] in ("insufficient data", "inconclusive") for c in out["claims"])
    # the same two runs outside a study: the sweep report (tests/test_sweep_report.py), no claim at all
    st2 = RunStore(tmp_path / "t")
    for loss in ("ce", "ls"):
        _put(st2, o, loss, {"seed": 0, "dataset": {"name": "digits"}, "loss": {"name": loss},
                            "noise": {"kind": "symmetric", "rate": 0.2}, "_study": False},
             {"test_acc": 0.5, "train_acc_noisy": 1.0})
    res = _cli(["report", str(tmp_path / "t"), "--json"])
    out = json.loads(res.output)
    assert out["kind"] == "sweep" and "claims" not in out and out["counts"]["completed"] == 2
    md = (tmp_path / "t" / "report" / "report.md").read_text()
    assert "## Claims" not in md and "## Final metrics per group" in md


def test_fit_line_recovers_a_line():
    x = np.linspace(0, 1, 20)
    f = fit_line(x, 0.5 + 2 * x)
    assert f["slope"] == pytest.approx(2) and f["intercept"] == pytest.approx(0.5) and f["r2"] == pytest.approx(1)
    assert np.isnan(fit_line(np.ones(5), np.arange(5.0))["slope"])


def test_report_on_empty_store_is_a_clear_error(tmp_path):
    from nclab.report import build_report

    RunStore(tmp_path)
    with pytest.raises(ValueError, match="no completed runs"):
        build_report(tmp_path)


def test_feature_panels_and_geometry_from_saved_features(tmp_path):
    from nclab.report import build_report

    st = _fabricate(tmp_path / "s", seeds=5)
    rng = np.random.default_rng(1)
    yc = np.repeat([0, 1], 50)
    for seed in range(5):
        for loss in ("ce", "ls"):
            for rate in (0.0, 0.2):
                y = yc.copy()
                if rate:
                    y[:5] = 1
                x = np.abs(np.eye(2)[yc] * 3 + rng.normal(size=(100, 2)) * 0.05)
                if seed == 4 and loss == "ls" and rate == 0:  # one dead class
                    x[yc == 1] *= 0.01
                d = st.run_dir(f"digits-{loss}-{rate}-{seed}")
                d.mkdir(parents=True, exist_ok=True)
                np.savez(d / "features.npz", features=x, labels=y, clean_labels=yc, W=np.eye(2), b=np.zeros(2))
    rep = build_report(tmp_path / "s")
    panels = sorted(p.name for p in rep.figures if "_features_" in p.name)
    assert panels == ["digits_features_ce.png", "digits_features_ls.png"]
    geo = {(g["loss"], g["rate"]): g for g in rep.summary["geometry"]}
    assert geo[("ls", 0.0)]["dead class"] == 1 and geo[("ls", 0.0)]["orthogonal frame"] == 4
    assert geo[("ce", 0.0)]["orthogonal frame"] == 5 and all(g["bias"] for g in geo.values())
    h3 = next(c for c in rep.summary["claims"] if c["id"] == "H3-bias")
    assert h3["estimate"] == pytest.approx(0.9) and h3["verdict"] == "held" and h3["ci"][0] > 0.5
    nob = next(c for c in rep.summary["claims"] if c["id"] == "H3-nobias")
    assert nob["verdict"] == "insufficient data" and "without a classifier bias" in nob["reason"]
    assert "Geometry of the class means" in rep.markdown.read_text()


def test_study_report_leaves_out_search_trials(tmp_path):
    """Runs of other sweeps in a study store (e.g. the paper scale's search trials) are not study runs."""
    from nclab.report import build_report

    st = _fabricate(tmp_path / "s", seeds=1)
    o = Owner()
    cfg = {"seed": 0, "dataset": {"name": "digits", "classes": 2, "val_fraction": 0.2}, "loss": {"name": "ce"},
           "noise": {"kind": "symmetric_all", "rate": 0.2}}
    st.register([{"hash": "trial", "name": "trial", "config": cfg}], sweep="search-x")
    st.claim("trial", o)
    st.complete("trial", o, {"test_acc": 0.5, "train_acc_noisy": 1.0})
    rep = build_report(tmp_path / "s")
    assert rep.summary["runs"]["completed"] == 14 and "trial" not in {e["hash"] for e in rep.summary["excluded_runs"]}


def test_no_bias_runs_are_their_own_variant_and_feed_h3_nobias(tmp_path):
    from nclab.report import build_report

    st = _fabricate(tmp_path / "s", seeds=5)
    o = Owner()
    yc = np.repeat([0, 1], 50)
    rng = np.random.default_rng(2)
    for seed in range(5):
        for loss in ("ce", "ls"):
            h = f"nobias-{loss}-{seed}"
            cfg = {"seed": seed, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": loss},
                   "model": {"classifier_bias": False}, "noise": {"kind": "symmetric_all", "rate": 0.0},
                   "stop": {"train_acc": 0.999, "patience": 100}}
            _put(st, o, h, cfg, {"test_acc": 0.99, "train_acc_noisy": 1.0, "terminal_epoch": 1, "stop_reason": "terminal",
                                 "train.dilation_normalized": 0.1})
            d = st.run_dir(h)
            d.mkdir(parents=True, exist_ok=True)
            x = np.abs(np.eye(2)[yc] * 3 + rng.normal(size=(100, 2)) * 0.05)
            np.savez(d / "features.npz", features=x, labels=yc, clean_labels=yc, W=np.eye(2))  # no b: no bias
    rep = build_report(tmp_path / "s")
    claims = {c["id"]: c for c in rep.summary["claims"]}
    assert claims["H3-nobias"]["verdict"] == "held" and claims["H3-nobias"]["estimate"] == 1.0
    assert claims["H2-dilation"]["n_pairs"] == 20  # the no-bias runs are not paired with the main ones
    assert any(c["variant"] == "nobias" and c["runs"] == 5 for c in rep.summary["cells"])
    assert "Classifier without bias" in rep.markdown.read_text()
