"""nclab.detect.find_label_issues / get_label_quality_scores against cleanlab itself, and on a real run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nclab.detect import detection_quality, find_label_issues, get_label_quality_scores

cleanlab_filter = pytest.importorskip("cleanlab.filter")  # in the test extra: runs for real in CI
cleanlab_rank = pytest.importorskip("cleanlab.rank")


@pytest.fixture(scope="module")
def digits_probs():
    """Out-of-fold probabilities of a logistic regression on digits with 20 % symmetric noise."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    d = load_digits()
    x, y = d.data / 16.0, d.target
    g = np.random.default_rng(0)
    noisy = y.copy()
    flip = g.random(len(y)) < 0.2
    noisy[flip] = (y[flip] + g.integers(1, 10, flip.sum())) % 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = cross_val_predict(LogisticRegression(max_iter=200, C=0.1), x, noisy, cv=3, method="predict_proba")
    return noisy, p, flip


@pytest.mark.parametrize("method", ["self_confidence", "normalized_margin", "confidence_weighted_entropy"])
def test_quality_scores_equal_cleanlab(digits_probs, method):
    y, p, _ = digits_probs
    ours = get_label_quality_scores(y, p, method=method)  # pred_probs positionally, as in cleanlab
    ref = cleanlab_rank.get_label_quality_scores(y, p, method=method)
    assert ours.shape == ref.shape == y.shape and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    assert np.array_equal(ours, get_label_quality_scores(y, pred_probs=p, method=method))


def test_confidence_weighted_entropy_edge_cases_equal_cleanlab():
    # a one-hot row (zero entropy), a uniform row, and a zero self-confidence (clipped)
    y = np.array([0, 1, 2, 0])
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    ours = get_label_quality_scores(y, p, method="confidence_weighted_entropy")
    ref = cleanlab_rank.get_label_quality_scores(y, p, method="confidence_weighted_entropy")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_positional_pred_probs_matches_cleanlab_flagged_set(digits_probs):
    y, p, _ = digits_probs
    ours = find_label_issues(y, p)  # the cleanlab habit: labels, pred_probs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cleanlab_filter.find_label_issues(y, p)
    assert (ours & ref).sum() / (ours | ref).sum() >= 0.95


def test_mixed_evidence_needs_a_named_rule(digits_probs):
    y, p, _ = digits_probs
    m = np.log(p[np.arange(len(y)), y] / (1 - p[np.arange(len(y)), y]))  # a margin per sample
    with pytest.raises(ValueError, match="pred_probs= were given together: name the rule with filter_by="):
        find_label_issues(y, p, margins=m)
    with pytest.raises(ValueError, match="name the rule with method="):
        get_label_quality_scores(y, p, margins=m)
    assert np.array_equal(find_label_issues(y, p, margins=m, filter_by="aum"), find_label_issues(y, margins=m))
    assert np.array_equal(find_label_issues(y, p, margins=m, filter_by="prune_by_noise_rate"), find_label_issues(y, p))
    np.testing.assert_array_equal(get_label_quality_scores(y, p, margins=m, method="self_confidence"),
                                  p[np.arange(len(y)), y])


@pytest.mark.parametrize("filter_by,min_jaccard", [
    ("prune_by_noise_rate", 0.95), ("prune_by_class", 0.95), ("both", 0.95),
    ("confident_learning", 0.95), ("predicted_neq_given", 1.0),
])
def test_flagged_sets_agree_with_cleanlab(digits_probs, filter_by, min_jaccard):
    y, p, flip = digits_probs
    ours = find_label_issues(y, pred_probs=p, filter_by=filter_by)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cleanlab_filter.find_label_issues(y, p, filter_by=filter_by)
    assert ours.dtype == ref.dtype == np.bool_ and ours.shape == ref.shape == y.shape
    jaccard = (ours & ref).sum() / (ours | ref).sum()
    assert jaccard >= min_jaccard, jaccard
    assert flip[ours].mean() > 2 * flip.mean()  # far better than a random flagged set


def test_default_filter_is_cleanlabs_default(digits_probs):
    y, p, _ = digits_probs
    assert np.array_equal(find_label_issues(y, pred_probs=p),
                          find_label_issues(y, pred_probs=p, filter_by="prune_by_noise_rate"))


def test_ranked_indices_follow_cleanlabs_convention(digits_probs):
    y, p, _ = digits_probs
    mask = find_label_issues(y, pred_probs=p)
    ranked = find_label_issues(y, pred_probs=p, return_indices_ranked_by="self_confidence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cleanlab_filter.find_label_issues(y, p, return_indices_ranked_by="self_confidence")
    # flagged indices only, most likely issue (lowest quality) first
    assert np.issubdtype(ranked.dtype, np.integer) and np.issubdtype(ref.dtype, np.integer)
    assert sorted(ranked.tolist()) == np.flatnonzero(mask).tolist()
    q = get_label_quality_scores(y, pred_probs=p)
    assert np.all(np.diff(q[ranked]) >= 0)
    common = set(ranked.tolist()) & set(ref.tolist())
    assert len(common) >= 0.95 * max(len(ranked), len(ref))
    assert [i for i in ranked if i in common] == [i for i in ref if i in common]


# --------------------------------------------------------------------------- margins / features
def test_aum_rule_by_hand():
    y = np.array([0, 1, 1, 0])
    m = np.array([[2.0, -1.0, 0.5, -3.0],
                  [4.0, -2.0, -1.0, 2.0]])  # AUM = 3, -1.5, -0.25, -0.5
    assert find_label_issues(y, margins=m).tolist() == [False, True, True, True]
    np.testing.assert_allclose(get_label_quality_scores(y, margins=m), 1 / (1 + np.exp(-np.array([3, -1.5, -0.25, -0.5]))))
    # threshold samples with AUMs -2 and -1: the 50th percentile -1.5 flags AUM <= -1.5
    tm = np.array([[-3.0, -1.0], [-1.0, -1.0]])
    assert find_label_issues(y, margins=m, threshold_margins=tm, threshold_percentile=50).tolist() == [False, True, False, False]
    ranked = find_label_issues(y, margins=m, return_indices_ranked_by="aum")
    assert ranked.tolist() == [1, 3, 2]


def test_nearest_centroid_rule_and_feature_ranking():
    h = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [0.05, 0.05]])
    y = np.array([0, 0, 0, 1, 1, 1])  # the last sample sits in class 0's cluster
    mask = find_label_issues(y, features=h)
    assert mask.tolist() == [False] * 5 + [True]
    q = get_label_quality_scores(y, features=h, method="centroid_ratio")
    assert q.argmin() == 5 and np.all((q >= 0) & (q <= 1))
    assert find_label_issues(y, features=h, return_indices_ranked_by="knn", k=2).tolist() == [5]


def test_errors_name_the_problem():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="at least one of"):
        find_label_issues(y)
    with pytest.raises(ValueError, match="needs pred_probs"):
        find_label_issues(y, margins=np.zeros((2, 3)), filter_by="prune_by_class")
    with pytest.raises(ValueError, match="rows must sum to 1"):
        find_label_issues(y, pred_probs=np.ones((3, 2)))
    with pytest.raises(ValueError, match="E×3"):
        find_label_issues(y, margins=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown filter_by"):
        find_label_issues(y, margins=np.zeros(3), filter_by="nope")
    with pytest.raises(ValueError, match="return_indices_ranked_by"):
        find_label_issues(y, margins=np.zeros(3), return_indices_ranked_by="nope")
    with pytest.raises(TypeError, match="integer"):
        find_label_issues(np.array([0.5, 1.0, 0.0]), margins=np.zeros(3))
    with pytest.raises(ValueError, match="only by filter_by='aum'"):
        find_label_issues(y, features=np.zeros((3, 2)), threshold_margins=np.zeros((1, 2)))


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A real run: digits, 4 classes, 20 % symmetric noise, margins recorded every epoch."""
    from nclab.train import TrainConfig, train

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("issues-run")
    cfg = TrainConfig.from_dict({"epochs": 6, "seed": 0, "device": "cpu", "eval_every": 6, "record_dynamics": True,
                                 "dataset": {"name": "digits", "classes": 4, "per_class": 60},
                                 "noise": {"kind": "symmetric", "rate": 0.2, "exact": True},
                                 "model": {"depth": 2, "width": 64, "feature_dim": 16}, "optim": {"lr": 0.05}})
    res = train(cfg, run_dir=d, progress=False)
    assert res.status == "completed"
    return d


def test_margins_recorded_every_epoch_and_flag_beats_random(noisy_run):
    from nclab.store import rundir
    from nclab.store.dynamics import load_dynamics

    dyn = load_dynamics(noisy_run)
    assert dyn.epochs.tolist() == [1, 2, 3, 4, 5, 6]  # eval_every=6, margins still every epoch
    arrays = rundir.load_npz(noisy_run / rundir.NOISE)
    y, truth = arrays["noisy"], arrays["noisy"] != arrays["clean"]
    mask = find_label_issues(y, margins=dyn.margins)
    base = truth.mean()
    assert truth[mask].mean() > 2 * base and mask[truth].mean() > 0.5
    q = get_label_quality_scores(y, margins=dyn.margins)
    assert detection_quality(1 - q, truth)["auroc"] > 0.85
    ranked = find_label_issues(y, margins=dyn.margins, return_indices_ranked_by="aum")
    assert sorted(ranked.tolist()) == np.flatnonzero(mask).tolist()
    # features of the same run: the combined method needs both kinds of evidence
    f = rundir.load_npz(noisy_run / rundir.FEATURES)
    qc = get_label_quality_scores(y, features=f["features"], margins=dyn.margins, method="combined")
    assert detection_quality(1 - qc, truth)["auroc"] > 0.85


def test_demo_records_dynamics_for_detect(tmp_path):
    from nclab.demo import run_demo
    from nclab.detect import score_run
    from nclab.store.dynamics import load_dynamics

    res = run_demo(out_dir=tmp_path, pairs=2, epochs=3)
    for r in res.runs:
        assert load_dynamics(r.run_dir).epochs.tolist() == [1, 2, 3]
    sus = score_run(res.runs[0].run_dir, score="dynamics")
    assert sus.flag_rule == "aum" and sus.quality()["auroc"] > 0.5
