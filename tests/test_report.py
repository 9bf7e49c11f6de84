"""The study report from small fabricated stores and run tables: every run counts (dead-class
and non-terminal runs stay in), geometry from the clean class means, runs.csv round trip, the
same claims from a store and from its runs.csv, and the claims' required fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from nclab.metrics.frames import DEAD, FRAME
from nclab.report.study_data import read_runs_csv, runs_table, write_runs_csv
from nclab.store.index import Owner, RunStore

PNG = b"\x89PNG\r\n\x1a\n"
HEADLINE_KEYS = ("estimate", "ci", "n_pairs", "n_excluded", "verdict", "verdict_holm", "sensitivity")


@pytest.fixture(autouse=True)
def _no_model_fit(monkeypatch):
    """The model-vs-runs section (it fits the M-D model; tested in its own module) is a stub
    here: these tests are about the report's own content."""
    import nclab.report.model_vs_runs as mvr

    monkeypatch.setattr(mvr, "section", lambda rows, out_dir, *, seed=0: (
        "## Model vs runs\n\nstub", {"n_rows": len(rows), "seed": seed}))


def _cli(args):
    from nclab.cli.sweep import register

    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:
        pass

    return CliRunner().invoke(app, args)


def _put(st, o, h, cfg, final, *, outcome="completed", sweep="md-small"):
    st.register([{"hash": h, "name": h, "config": cfg}], sweep=sweep)
    st.claim(h, o)
    st.complete(h, o, final, outcome=outcome)


def _features(st, h, *, dead: int | None = None, n: int = 40, flip: int = 0, seed: int = 0, bias: bool = True):
    """An orthogonal frame of two classes (or one class at the origin), noisy labels flipped."""
    rng = np.random.default_rng(seed)
    yc = np.repeat([0, 1], n // 2)
    x = np.abs(np.eye(2)[yc] * 3 + rng.normal(size=(n, 2)) * 0.05)
    if dead is not None:
        x[yc == dead] *= 0.01
    y = yc.copy()
    y[:flip] = 1 - y[:flip]
    d = st.run_dir(h)
    d.mkdir(parents=True, exist_ok=True)
    extra = {"b": np.zeros(2)} if bias else {}
    np.savez(d / "features.npz", features=x, labels=y, clean_labels=yc, W=np.eye(2), **extra)


def _fabricate(root, *, seeds: int = 6, dead_seed: int | None = None, ls_dilates_less: bool = True):
    """CE/LS x rates {0, 0.2, 0.4} x seeds on digits, plus the noise-free no-bias variant.
    ``dead_seed``: that seed's runs end with class 1 dead and (without a bias) at accuracy 0.5."""
    st = RunStore(root)
    rng = np.random.default_rng(0)
    o = Owner()
    for seed in range(seeds):
        dead = seed == dead_seed
        for rate in (0.0, 0.2, 0.4):
            mem = 0.2 + 2 * rate + 0.05 * rng.standard_normal()
            for loss in ("ce", "ls"):
                slope = (0.3 if loss == "ls" else 0.8) if ls_dilates_less else (0.8 if loss == "ls" else 0.3)
                dil = 0.1 + slope * mem + 0.01 * rng.standard_normal()
                cfg = {"seed": seed, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": loss, "alpha": 0.1},
                       "noise": {"kind": "symmetric_all", "rate": rate}, "terminal_acc": 0.999, "epochs": 200}
                h = f"d-{loss}-{rate}-{seed}"
                fin = {"epoch": 200, "lr": 0.0, "test_acc": 0.95 - rate * (0.3 if loss == "ce" else 0.2) + 0.01 * seed,
                       "train_acc_noisy": 0.995 if dead else 1.0, "terminal_epoch": None if dead else 40 + seed,
                       "stop_reason": "epochs", "train.dilation_normalized": dil,
                       "train.clean_centroid_distance": 2.0, "test.dilation": 2.0 * dil * 1.1,
                       "train.nc1": 0.01 + rate, "train.nc2_orthogonal_error_means": 0.02 + rate / 10,
                       "train.realized_noise_rate": rate / 2 + 0.001 * seed}
                if rate:
                    fin["train.memorization_normalized"] = mem
                _put(st, o, h, cfg, fin)
                _features(st, h, dead=1 if dead else None, flip=int(rate * 10), seed=seed)
        for loss in ("ce", "ls"):  # no bias, noise-free: a dead class 1 ties at logits (0, 0) -> accuracy 0.5
            h = f"nb-{loss}-{seed}"
            cfg = {"seed": seed, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": loss},
                   "model": {"classifier_bias": False}, "noise": {"kind": "symmetric_all", "rate": 0.0},
                   "terminal_acc": 0.999}
            _put(st, o, h, cfg, {"epoch": 200, "test_acc": 0.5 if dead else 0.99, "train_acc_noisy": 0.5 if dead else 1.0,
                                 "terminal_epoch": None if dead else 3, "train.dilation_normalized": 0.1})
            _features(st, h, dead=1 if dead else None, seed=seed, bias=False)
    # a diverged run: its pair leaves, counted; a failed run never enters
    cfg = {"seed": seeds, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": "ce"},
           "noise": {"kind": "symmetric_all", "rate": 0.4}, "terminal_acc": 0.999}
    _put(st, o, "nan", cfg, {"test_acc": 0.5}, outcome="diverged")
    _put(st, o, "nan-ls", {**cfg, "loss": {"name": "ls"}}, {"epoch": 200, "test_acc": 0.6, "train.memorization_normalized": 1.0,
                                                             "train.dilation_normalized": 1.0, "train.realized_noise_rate": 0.2})
    st.register([{"hash": "bad", "name": "bad", "config": {"dataset": {"name": "digits"}}}], sweep="md-small")
    st.claim("bad", o)
    st.fail("bad", o, "boom")
    return st


def test_runs_table_counts_every_run_with_geometry_by_clean_means(tmp_path):
    st = _fabricate(tmp_path / "s", seeds=5, dead_seed=2)
    rows = runs_table(st)
    assert len(rows) == 5 * 3 * 2 + 5 * 2 + 2  # every completed and diverged run; the failed one is not a result
    by = {r["hash"]: r for r in rows}
    # a dead class 1 without a bias sits at accuracy 0.5: classified by its class means, and kept
    nb = by["nb-ls-2"]
    assert nb["geometry"] == DEAD and nb["train_acc_noisy"] == 0.5 and nb["reached_terminal"] is False
    assert by["nb-ls-1"]["geometry"] == FRAME and by["nb-ls-1"]["bias"] is False and by["d-ls-0.0-1"]["bias"] is True
    # noisy runs are classified by the clean labels (the flipped samples do not move the means)
    assert by["d-ce-0.4-0"]["geometry"] == FRAME and by["d-ce-0.4-2"]["geometry"] == DEAD
    assert by["nan"]["status"] == "diverged" and by["nan"]["geometry"] is None
    assert by["d-ce-0.2-3"]["realized_noise"] == pytest.approx(0.103) and by["d-ce-0.2-3"]["noise_rate"] == 0.2
    assert by["d-ce-0.2-3"]["test_dilation"] == pytest.approx(by["d-ce-0.2-3"]["dilation"] * 1.1)


def test_runs_csv_round_trips_exactly(tmp_path):
    rows = runs_table(_fabricate(tmp_path / "s", seeds=5, dead_seed=2))
    p = write_runs_csv(rows, tmp_path / "runs.csv")
    back = read_runs_csv(p)
    assert back == [{k: r.get(k) for k in back[0]} for r in rows]
    bad = tmp_path / "bad.csv"
    bad.write_text(p.read_text().replace(",200,", ",two hundred,", 1))
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: column 'epochs'"):
        read_runs_csv(bad)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a study runs table"):
        read_runs_csv(tmp_path / "x.csv")


def test_every_pair_counts_and_h3_counts_every_noise_free_run(tmp_path):
    from nclab.report.study_report import study_summary

    rows = runs_table(_fabricate(tmp_path / "s", seeds=6, dead_seed=2))
    summary, _ = study_summary(rows)
    claims = {c["id"]: c for c in summary["claims"]}
    for c in claims.values():
        for k in HEADLINE_KEYS:
            assert k in c, (c["id"], k)
    for cid, variant in (("H3-bias", "main"), ("H3-nobias", "nobias")):
        assert claims[cid]["n_runs"] == sum(r["variant"] == variant and r["noise_rate"] == 0 for r in rows)
    # the dead-class seed stays in: 5 of 6 seeds orthogonal without a bias (the old filter dropped it)
    assert claims["H3-nobias"]["estimate"] == pytest.approx(5 / 6)
    assert claims["H3-nobias"]["sensitivity"]["n_left_out"] == 2 and claims["H3-nobias"]["sensitivity"]["estimate"] == 1.0
    # H2: 6 seeds x 2 noisy rates = 12 pairs (+ 1 pair left out: its CE run diverged)
    h2 = claims["H2-dilation"]
    assert h2["n_pairs"] == 12 and h2["n_excluded"] == 1 and h2["verdict"] == "held"
    assert h2["sensitivity"]["n_left_out"] == 2 and h2["sensitivity"]["n_pairs"] == 10
    assert set(h2["strata"]) == {"orthogonal frame", "dead class"}
    assert h2["strata"]["orthogonal frame"]["n_pairs"] == 10 and h2["strata"]["dead class"]["n_pairs"] == 2
    assert all(x["exploratory"] for x in h2["cells"])
    assert claims["H1-ce-digits"]["verdict"] == "held" and "strata" in claims["H1-ce-digits"]
    assert claims["H2-slope-digits"]["verdict"] == "held"  # LS slope 0.3 vs CE 0.8
    for c in claims.values():
        assert c["verdict_holm"] in ("held", "did not hold", "inconclusive", "insufficient data")


def test_report_from_runs_csv_gives_the_same_claims(tmp_path):
    from nclab.report import build_report

    rep = build_report(_fabricate(tmp_path / "s", seeds=5, dead_seed=1).root, out_dir=tmp_path / "out")
    claims = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert claims == rep.summary
    md = rep.markdown.read_text()
    assert "Holm" in md and "exploratory" in md and "η (p)" in md and "n/a" not in md
    assert any(f.name == "digits_features_ce.png" for f in rep.figures)
    for f in rep.figures:
        assert f.read_bytes()[:8] == PNG
    res = _cli(["report", str(tmp_path / "out" / "runs.csv"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == claims
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["claims.json", "figures", "report.html",
                                                                   "report.md", "runs.csv"]  # --json wrote nothing new
    res = _cli(["report", str(tmp_path / "missing.csv"), "--json"])
    assert res.exit_code == 2 and "missing.csv" in res.output


def test_too_few_seeds_is_insufficient_never_a_verdict(tmp_path):
    from nclab.report import build_report

    rep = build_report(_fabricate(tmp_path / "s", seeds=3).root, write=False)
    for c in rep.summary["claims"]:
        assert c["verdict"] == "insufficient data", c["id"]
        assert c["verdict_holm"] == "insufficient data"


def test_fit_line_recovers_a_line():
    from nclab.report.study_data import fit_line

    x = np.linspace(0, 1, 20)
    f = fit_line(x, 0.5 + 2 * x)
    assert f["slope"] == pytest.approx(2) and f["intercept"] == pytest.approx(0.5) and f["r2"] == pytest.approx(1)


def test_report_on_empty_store_is_a_clear_error(tmp_path):
    from nclab.report import build_report

    RunStore(tmp_path)
    with pytest.raises(ValueError, match="no completed runs"):
        build_report(tmp_path)


def test_study_report_leaves_out_search_trials(tmp_path):
    """Runs of other sweeps in a study store (the paper scale's search trials) are not study runs."""
    from nclab.report import build_report

    st = _fabricate(tmp_path / "s", seeds=1)
    _put(st, Owner(), "trial", {"seed": 0, "dataset": {"name": "digits", "classes": 2}, "loss": {"name": "ce"},
                                "noise": {"kind": "symmetric_all", "rate": 0.2}}, {"test_acc": 0.5}, sweep="search-x")
    rep = build_report(tmp_path / "s", write=False)
    assert rep.summary["runs"]["total"] == 1 * 3 * 2 + 2 + 2
