"""Verdict logic on fabricated paired data: held / did not hold / inconclusive / insufficient,
slopes with intervals, Wilson fractions."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.report import verdicts as V


def _rows(diff_mean: float, *, n_seeds: int = 10, sd: float = 0.01, rates=(0.2, 0.4), metric: str = "m", seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_seeds):
        for rate in rates:
            base = rng.normal()
            rows.append({"dataset": "d", "variant": "main", "loss": "ce", "rate": rate, "seed": s, metric: base})
            rows.append({"dataset": "d", "variant": "main", "loss": "ls", "rate": rate, "seed": s,
                         metric: base + diff_mean + sd * rng.standard_normal()})
    return rows


def _claim(rows, direction="less"):
    return V.paired_claim("X", "x", rows, "m", direction=direction, rng=np.random.default_rng(1))


def test_paired_claim_three_values_and_insufficient():
    held = _claim(_rows(-0.1))
    assert held.verdict == V.HELD and held.ci[1] < 0 and held.n_pairs == 20 and held.n_seeds == 10
    assert held.estimate == pytest.approx(-0.1, abs=0.01)
    assert _claim(_rows(+0.1)).verdict == V.NOT_HELD
    assert _claim(_rows(+0.1), direction="greater").verdict == V.HELD
    inc = _claim(_rows(0.0, sd=0.05))
    assert inc.verdict == V.INCONCLUSIVE and inc.ci[0] < 0 < inc.ci[1]
    few = _claim(_rows(-0.1, n_seeds=4))
    assert few.verdict == V.INSUFFICIENT and few.estimate is None and few.ci is None
    # per-cell results are reported, each with its own interval
    assert {c["rate"] for c in held.cells} == {0.2, 0.4} and all(c["verdict"] == V.HELD for c in held.cells)


def test_pairs_need_both_losses_same_seed_and_cell():
    rows = _rows(-0.1)
    rows = [r for r in rows if not (r["loss"] == "ls" and r["seed"] >= 4)]  # LS of seeds 4.. missing
    c = _claim(rows)
    assert c.verdict == V.INSUFFICIENT and "most: 4" in c.reason
    assert V.pair_differences([], "m") == {}
    with pytest.raises(ValueError, match="cannot pair"):
        V.pair_differences(_rows(0.0) + _rows(0.0)[:1], "m")


def test_missing_cells_is_insufficient():
    assert _claim([]).verdict == V.INSUFFICIENT
    # only noise-free cells, but the claim needs noisy ones
    c = V.paired_claim("X", "x", _rows(-0.1, rates=(0.0,)), "m", direction="less", rng=np.random.default_rng(0),
                       cells=lambda cell: cell[2] > 0)
    assert c.verdict == V.INSUFFICIENT and c.reason == "no cell with CE/LS pairs"


def test_decide_edges():
    assert V.decide((-2, -1), n=5, direction="less") == V.HELD
    assert V.decide((1, 2), n=5, direction="less") == V.NOT_HELD
    assert V.decide((-1, 1), n=5, direction="less") == V.INCONCLUSIVE
    assert V.decide((-2, -1), n=4, direction="less") == V.INSUFFICIENT
    assert V.decide(None, n=9, direction="greater") == V.INSUFFICIENT
    assert V.decide((0.6, 0.9), n=9, direction="greater", threshold=0.5) == V.HELD
    with pytest.raises(ValueError):
        V.decide((0, 1), n=9, direction="up")


def test_bootstrap_ci_is_reproducible_and_covers_the_mean():
    x = np.random.default_rng(3).normal(1.0, 0.5, size=12)
    a = V.bootstrap_ci(x, rng=np.random.default_rng(7))
    b = V.bootstrap_ci(x, rng=np.random.default_rng(7))
    assert a == b and a[0] < x.mean() < a[1]
    assert V.bootstrap_ci(np.full(6, 0.3), rng=np.random.default_rng(0)) == (0.3, 0.3)
    with pytest.raises(ValueError):
        V.bootstrap_ci([1.0], rng=np.random.default_rng(0))


def _md_rows(slope_ce: float, slope_ls: float, *, n_seeds: int = 8, noise: float = 0.02):
    rng = np.random.default_rng(0)
    rows = []
    for ds, off in (("a", 0.0), ("b", 1.0)):  # per-dataset intercepts must not bias the slope
        for s in range(n_seeds):
            for rate in (0.1, 0.2, 0.3, 0.4):
                mem = 0.2 + 2 * rate + 0.05 * rng.standard_normal()
                for loss, b in (("ce", slope_ce), ("ls", slope_ls)):
                    rows.append({"dataset": ds, "variant": "main", "loss": loss, "rate": rate, "seed": s,
                                 "memorization": mem, "dilation": off + b * mem + noise * rng.standard_normal()})
    return rows


def test_slope_claims():
    rows = _md_rows(0.8, 0.0)
    ce = V.slope_claim("H1-ce", "", rows, loss="ce", x="memorization", y="dilation", rng=np.random.default_rng(0))
    assert ce.verdict == V.HELD and ce.estimate == pytest.approx(0.8, abs=0.05) and ce.ci[0] > 0
    assert {c["dataset"] for c in ce.cells} == {"a", "b"}
    ls = V.slope_claim("H1-ls", "", rows, loss="ls", x="memorization", y="dilation", rng=np.random.default_rng(0))
    assert ls.verdict == V.INCONCLUSIVE and ls.ci[0] < 0 < ls.ci[1]
    d = V.slope_difference_claim("H2-slope", "", rows, x="memorization", y="dilation", rng=np.random.default_rng(0))
    assert d.verdict == V.HELD and d.estimate == pytest.approx(-0.8, abs=0.05)
    few = V.slope_claim("H1-ce", "", _md_rows(0.8, 0.0, n_seeds=3), loss="ce", x="memorization", y="dilation",
                        rng=np.random.default_rng(0))
    assert few.verdict == V.INSUFFICIENT
    assert V.pooled_slope([("a", 1, 1), ("a", 2, 3), ("b", 5, 0), ("b", 6, 2)]) == pytest.approx(2.0)


def test_wilson_and_fraction_claims():
    lo, hi = V.wilson_interval(9, 10)
    assert 0.55 < lo < 0.6 and 0.98 < hi <= 1.0
    assert V.fraction_claim("H3", "", 10, 10).verdict == V.HELD
    assert V.fraction_claim("H3", "", 0, 10).verdict == V.NOT_HELD
    assert V.fraction_claim("H3", "", 5, 10).verdict == V.INCONCLUSIVE
    f = V.fraction_claim("H3", "", 2, 2)
    assert f.verdict == V.INSUFFICIENT and "need 5" in f.reason
    assert V.fraction_claim("H3", "", 0, 0).estimate is None
