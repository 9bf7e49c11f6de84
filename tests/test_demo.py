import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.demo import DEMO_METRICS, paired_differences, run_demo
from nclab.stats import mean_interval, paired_difference

PNG = b"\x89PNG\r\n\x1a\n"


def test_paired_differences_count_wins_by_direction():
    ce = [{"test_acc": 0.8, "train.dilation": 1.0}, {"test_acc": 0.7, "train.dilation": 2.0},
          {"test_acc": 0.9, "train.dilation": 1.5}]
    ls = [{"test_acc": 0.9, "train.dilation": 0.5}, {"test_acc": 0.6, "train.dilation": 1.0},
          {"test_acc": 1.0, "train.dilation": 1.6}]
    d = {x.name: x for x in paired_differences(ce, ls)}
    assert set(d) == {"test_accuracy", "dilation"}  # metrics absent from the records are left out
    assert d["test_accuracy"].ls_wins == 2 and d["dilation"].ls_wins == 2
    assert d["dilation"].estimate == pytest.approx((-0.5 - 1.0 + 0.1) / 3)
    assert {m[3] for m in DEMO_METRICS} == {"higher", "lower"}


def test_t_interval_matches_scipy_and_rejects_bad_input():
    from scipy import stats

    x = [0.1, 0.3, -0.2, 0.5, 0.05]
    mi = mean_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mi.lo == pytest.approx(lo) and mi.hi == pytest.approx(hi)
    assert mean_interval([2.0]).ci is None
    assert paired_difference([1, 2], [2, 4]).mean == 1.5
    with pytest.raises(ValueError, match="no finite"):
        mean_interval([float("nan")])
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1, 2], [1])


def test_demo_cli_json_pairs_share_noise_and_figures(tmp_path):
    _register_all()
    runner = CliRunner()
    out = runner.invoke(app, ["demo", "--epochs", "2", "--pairs", "2", "--out", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["pairs"] == 2 and set(doc["differences"]["test_accuracy"]) >= {"estimate", "ci", "ls_wins"}
    dil = doc["differences"]["dilation"]
    assert all(math.isfinite(v) for v in dil["ci"]) and dil["ci"][0] <= dil["estimate"] <= dil["ci"][1]
    assert doc == json.loads((tmp_path / "summary.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in doc["runs"]] == ["ce-0", "ls-0", "ce-1", "ls-1"]
    # the two runs of a seed saw the same noisy labels; the seeds differ
    noisy = [np.load(tmp_path / r / "noise.npz")["noisy"] for r in ("ce-0", "ls-0", "ce-1", "ls-1")]
    assert np.array_equal(noisy[0], noisy[1]) and np.array_equal(noisy[2], noisy[3])
    assert not np.array_equal(noisy[0], noisy[2])
    assert sorted(p.rsplit("/", 1)[1] for p in doc["figures"]) == \
        ["curves.png", "differences.png", "features_ce.png", "features_ls.png"]
    for p in doc["figures"]:
        assert (tmp_path / p.rsplit("/", 1)[1]).read_bytes()[:8] == PNG
    assert (tmp_path / "pairs.csv").read_text().count("\n") == 3
    bad = runner.invoke(app, ["demo", "--dataset", "cifar", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown demo dataset 'cifar'" in bad.output
    one = runner.invoke(app, ["demo", "--pairs", "1", "--out", str(tmp_path)])
    assert one.exit_code == 2 and "pairs must be >= 2" in one.output


@pytest.mark.slow
@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_demo_fashion_mnist(tmp_path):
    res = run_demo(dataset="fashion-mnist", out_dir=tmp_path, pairs=2, epochs=2)
    assert all(r.final["test_acc"] > 0.8 for r in res.runs)
