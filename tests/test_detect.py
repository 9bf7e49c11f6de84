"""nclab.detect and nclab.store.dynamics: scores, recorder, detection on injected noise, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from nclab.detect import (
    aum_scores,
    centroid_ratio_scores,
    detection_quality,
    fit_epoch_scores,
    knn_disagreement_scores,
    rank_average,
    score_arrays,
)
from nclab.store.dynamics import DynamicsRecorder, load_dynamics, logit_margins


# ------------------------------------------------------------------------------ dynamics
def test_logit_margins_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    np.testing.assert_allclose(logit_margins(z, torch.tensor([0, 1])), [2.0, -3.0])
    assert logit_margins(z, torch.tensor([0, 1])).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        logit_margins(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        logit_margins(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))


def test_recorder_overwrites_truncates_and_loads(tmp_path):
    rec = DynamicsRecorder(tmp_path)
    y = torch.tensor([0, 1])
    rec.record(2, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), y)
    rec.record(1, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), y)
    rec.record(3, torch.tensor([[2.0, 0.0], [0.0, 2.0]]), y)
    rec.record(2, torch.tensor([[4.0, 0.0], [0.0, 4.0]]), y)  # re-recording overwrites
    d = load_dynamics(tmp_path)
    assert d.epochs.tolist() == [1, 2, 3]
    np.testing.assert_allclose(d.margins, [[-1, 1], [4, 4], [2, 2]])
    rec.truncate(after=2)  # resume from a checkpoint at epoch 2
    assert rec.epochs() == [1, 2]
    assert sorted(p.name for p in rec.dir.iterdir()) == ["epoch_0001.npy", "epoch_0002.npy"]  # no temp files left
    with pytest.raises(ValueError, match="holds 2 samples"):
        rec.record(5, torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    rec.clear()
    with pytest.raises(FileNotFoundError, match="record_dynamics"):
        load_dynamics(tmp_path)


# -------------------------------------------------------------------------------- scores
def test_aum_and_fit_epoch_by_hand():
    m = np.array([[-1.0, 1.0, -2.0, 0.5],
                  [1.0, 1.0, -1.0, -0.5],
                  [2.0, 1.0, -1.0, 0.5]])  # E=3 epochs, 4 samples
    np.testing.assert_allclose(aum_scores(m), [-2 / 3, -1.0, 4 / 3, -1 / 6])
    f = fit_epoch_scores(m)
    # sample 1 fitted from epoch 1, sample 0 from 2, sample 3 from 3, sample 2 never
    assert np.argsort(f).tolist() == [1, 0, 3, 2]
    assert f[2] >= 1.0 and f[1] < 0.5
    np.testing.assert_allclose(np.floor(f[:2] * 4), [2, 1])  # t/(E+1) plus a tie-break < 1/(E+1)


def test_detection_quality_by_hand():
    truth = np.array([0, 0, 1, 1, 0], dtype=bool)
    q = detection_quality([0.1, 0.2, 0.9, 0.8, 0.3], truth)
    assert q["auroc"] == 1.0 and q["precision_at_k"] == 1.0 and q["average_precision"] == 1.0
    q = detection_quality([0.9, 0.8, 0.1, 0.2, 0.3], truth)
    assert q["auroc"] == 0.0 and q["precision_at_k"] == 0.0
    q = detection_quality(np.zeros(5), truth)
    assert q["auroc"] == 0.5  # ties count one half
    assert q["average_precision"] == pytest.approx(2 / 5)  # one threshold holding everything
    # a tie across the groups: mislabeled {0.9, 0.5}, clean {0.5, 0.1, 0.2}. AUROC by hand: of the
    # 6 (mislabeled, clean) pairs, 5 are ordered right and one is tied (½) -> 5.5 / 6. AP: the
    # thresholds 0.9 (precision 1, recall ½) and 0.5 (precision 2/3, recall 1) -> ½·1 + ½·2/3.
    q = detection_quality([0.9, 0.5, 0.5, 0.1, 0.2], [1, 1, 0, 0, 0])
    assert q["auroc"] == pytest.approx(5.5 / 6) and q["average_precision"] == pytest.approx(0.5 + 1 / 3)
    assert q["precision_at_k"] == 1.0  # top 2 by sample order: 0.9 and the first 0.5
    q = detection_quality([0.5, 0.2, 0.9, 0.1, 0.3], truth)  # mislabeled ranks 1st and 5th
    assert q["auroc"] == pytest.approx(3 / 6) and q["precision_at_k"] == 0.5
    assert q["average_precision"] == pytest.approx((1 + 2 / 5) / 2)
    assert detection_quality([1.0, 2.0], [False, False])["auroc"] is None
    with pytest.raises(ValueError, match="NaN"):
        detection_quality([np.nan, 1.0], [True, False])


def test_feature_scores_against_direct_computation():
    g = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    h = g.normal(size=(60, 4)) + 3 * np.eye(4)[y]
    means = np.stack([h[y == c].mean(0) for c in range(3)])
    d = np.linalg.norm(h[:, None] - means[None], axis=2)
    own = d[np.arange(60), y]
    d[np.arange(60), y] = np.inf
    np.testing.assert_allclose(centroid_ratio_scores(h, y), own / d.min(1), rtol=1e-10)
    # kNN: the fraction part is an exact multiple of 1/k, the tie-break stays below 1/k
    k = 5
    s = knn_disagreement_scores(h, y, k=k)
    D = np.linalg.norm(h[:, None] - h[None], axis=2)
    np.fill_diagonal(D, np.inf)
    nn_idx = np.argsort(D, axis=1)[:, :k]
    frac = (y[nn_idx] != y[:, None]).mean(1)
    np.testing.assert_allclose(np.floor(s * k + 1e-9) / k, frac)
    assert np.all(s - frac < 1 / k)
    r = rank_average([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    np.testing.assert_allclose(r, [2 / 3, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="needs training dynamics"):
        score_arrays(labels=y, features=h, score="dynamics")


# ----------------------------------------------------------------- detection, end to end
@pytest.fixture(scope="module")
def small_setting():
    from nclab.detect.evaluate import Setting

    return Setting(dataset="digits", classes=4, per_class=80, kind="symmetric", rate=0.2, seed=0, epochs=8,
                   overrides=(("model.width", 64), ("model.feature_dim", 16)))


def test_detectors_beat_random_on_injected_noise(small_setting):
    from nclab.detect.evaluate import _forward, train_with_dynamics
    from nclab.train import prepare_data

    cfg = small_setting.config()
    data = prepare_data(cfg, torch.device("cpu"))
    a = data.noise_arrays
    truth = a["noisy"] != a["clean"]
    assert truth.sum() == 64  # exact 20% of 320
    model, margins = train_with_dynamics(cfg, data)
    assert margins.shape == (8, 320)
    feats = _forward(model, data.x_train)[1]
    for name in ("features", "knn", "dynamics", "fit_epoch", "combined"):
        s, _ = score_arrays(labels=data.y_train, features=feats, margins=margins, score=name,
                            num_classes=data.num_classes)
        q = detection_quality(s, truth)
        assert q["auroc"] > 0.75, (name, q)
        assert q["precision_at_k"] > 0.5, (name, q)  # random: 0.2
    # a random score is near 0.5: the margin above is not an artefact of the metric
    rnd = np.random.default_rng(0).random(320)
    assert abs(detection_quality(rnd, truth)["auroc"] - 0.5) < 0.1


def test_cleanlab_comparison_runs_on_the_same_noise(small_setting):
    pytest.importorskip("cleanlab")
    from nclab.detect.evaluate import evaluate_setting

    out = evaluate_setting(small_setting, scores=("features",), folds=2)
    methods = [r["method"] for r in out["rows"]]
    assert methods == ["nclab:features", "cleanlab:oof-2fold-same-model", "nclab-cl:oof-2fold-same-model",
                       "cleanlab:oof-2fold-logreg"]
    assert out["realized_noise_rate"] == pytest.approx(0.2)
    cl, ours = out["rows"][1], out["rows"][2]  # same probabilities: same ranking, near-identical flagged set
    assert ours["auroc"] == pytest.approx(cl["auroc"], abs=1e-12)
    assert abs(ours["flagged"] - cl["flagged"]) <= 0.05 * cl["flagged"] + 2
    assert out["rows"][0]["flagged"] >= 0 and "flagged_precision" in out["rows"][0]
    for r in out["rows"]:
        assert r["n_mislabeled"] == 64 and 0.5 < r["auroc"] <= 1.0


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_with_dynamics(tmp_path_factory):
    """A real nclab run trained in three sessions (resume), margins recorded by the trainer
    after every epoch (record_dynamics)."""
    from nclab.train import TrainConfig, train

    d = tmp_path_factory.mktemp("detect-run")
    cfg = TrainConfig.from_dict({"epochs": 3, "seed": 0, "device": "cpu", "record_dynamics": True,
                                 "dataset": {"name": "digits", "classes": 3, "per_class": 50},
                                 "noise": {"kind": "symmetric", "rate": 0.2, "exact": True},
                                 "model": {"depth": 2, "width": 32, "feature_dim": 8}, "optim": {"lr": 0.05}})
    for e in (1, 2, 3):
        train(cfg, run_dir=d, resume=e > 1, progress=False, max_epochs=e)
    assert DynamicsRecorder(d).epochs() == [1, 2, 3]
    return d


def _app():
    from nclab.cli import detect

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    detect.register(app)
    return app


def test_detect_cli_writes_ranked_csv(run_with_dynamics, tmp_path):
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(_app(), ["detect", str(run_with_dynamics), "--out", str(out), "--top", "3", "--score", "combined"])
    assert r.exit_code == 0, r.output
    assert "combined" in r.output and "AUROC" in r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 150
    assert list(rows[0])[:5] == ["index", "dataset_index", "given_label", "score", "rank"]
    assert {"score_centroid_ratio", "score_knn_disagreement", "score_aum", "flagged", "clean_label",
            "is_mislabeled"} <= set(rows[0])
    assert "flagged" in r.output and sum(int(r["flagged"]) for r in rows) > 0
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and rows[0]["rank"] == "1"
    assert sorted(int(r["index"]) for r in rows) == list(range(150))
    mis = sum(int(r["is_mislabeled"]) for r in rows)
    assert mis == 30
    top = sum(int(r["is_mislabeled"]) for r in rows[:mis])
    assert top / mis > 0.4  # random would give 0.2
    for row in rows:
        assert (row["given_label"] != row["clean_label"]) == (row["is_mislabeled"] == "1")


def test_detect_cli_errors(tmp_path, run_with_dynamics):
    r = CliRunner().invoke(_app(), ["detect", str(tmp_path)])
    assert r.exit_code == 2 and "config.yaml" in r.output
    r = CliRunner().invoke(_app(), ["detect", str(run_with_dynamics), "--score", "nope"])
    assert r.exit_code == 2 and "valid" in r.output


def test_detect_cli_auto_uses_dynamics_when_recorded(run_with_dynamics, tmp_path):
    r = CliRunner().invoke(_app(), ["detect", str(run_with_dynamics), "--out", str(tmp_path / "a.csv"), "--top", "0"])
    assert r.exit_code == 0, r.output
    assert "scored by dynamics" in " ".join(r.output.split())
