"""The search preset on a tiny problem: a fake objective (fast) and, when the trainer exists,
one real tiny digits search."""

from __future__ import annotations

import math
import socket

import optuna
import pytest

from nclab.store.index import RunStore
from nclab.sweep import InlineExecutor
from nclab.sweep.search import get_preset, run_search, trial_config
from nclab.sweep.testing import fake_run, fake_score

BASE = {"epochs": 10, "loss": {"name": "ls", "alpha": 0.1}, "optim": {"lr": 0.1}, "schedule": {"gamma": 0.1}}


def test_paper_preset_is_the_official_protocol():
    p = get_preset("paper")
    assert p.trials == 20 and p.sampler == "random" and p.metric == "val_acc_noisy"
    assert (p.space["optim.lr"].dist, p.space["optim.lr"].low, p.space["optim.lr"].high) == ("loguniform", 1e-5, 0.5)
    assert p.space["schedule.gamma"].values == [0.01, 0.1, 0.5]
    assert (p.space["loss.alpha"].low, p.space["loss.alpha"].high) == (0.01, 0.25)
    cfg = trial_config(BASE, {"optim.lr": 0.3}, p)
    assert cfg["epochs"] == 8 and cfg["dataset"]["val_fraction"] == 0.2 and cfg["optim"]["lr"] == 0.3
    assert BASE["epochs"] == 10  # the base is not mutated
    with pytest.raises(ValueError, match="unknown search preset"):
        get_preset("papr")


def test_search_on_fake_objective_finds_good_params_and_retrains(tmp_path):
    st = RunStore(tmp_path)
    res = run_search(BASE, store=st, preset="paper", trials=8, seed=3, executor=InlineExecutor(), run_fn=fake_run, resolve=None)
    assert res.n_trials == 8 and res.n_complete == 8
    values = [t["value"] for t in res.trials]
    assert res.best_value == max(values)
    assert math.isclose(res.best_value, fake_score({"optim": {"lr": res.best_params["optim.lr"]}, "loss": {"alpha": res.best_params["loss.alpha"]}}))
    for t in res.trials:  # every trial is in the preset's space and ran with 80% epochs on 80% data
        assert 1e-5 <= t["params"]["optim.lr"] <= 0.5 and t["params"]["schedule.gamma"] in (0.01, 0.1, 0.5)
        cfg = st.get(t["run_hash"])["config"]
        assert cfg["epochs"] == 8 and cfg["dataset"]["val_fraction"] == 0.2
    best = st.get(res.retrain_hash)
    assert best["status"] == "completed" and best["config"]["epochs"] == 10
    assert "val_fraction" not in best["config"].get("dataset", {})  # retrained on all the data
    assert best["config"]["optim"]["lr"] == res.best_params["optim.lr"]


def test_search_resumes_with_the_same_draws_and_skips_ce_alpha(tmp_path):
    ce = {**BASE, "loss": {"name": "ce"}}
    full = run_search(ce, store=RunStore(tmp_path / "a"), trials=6, seed=1, executor=InlineExecutor(), run_fn=fake_run, resolve=None, retrain=False)
    assert all(set(t["params"]) == {"optim.lr", "schedule.gamma"} for t in full.trials)  # no alpha for CE
    st = RunStore(tmp_path / "b")
    part = run_search(ce, store=st, trials=3, seed=1, executor=InlineExecutor(), run_fn=fake_run, resolve=None, retrain=False)
    assert part.n_trials == 3
    # a trial asked by a driver that died (never told) is re-run on resume
    study = optuna.load_study(study_name=part.study_name, storage=part.storage)
    dead = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    dead.set_user_attr("driver", f"{socket.gethostname()}:999999999:1")  # this host, a pid that is not alive
    rest = run_search(ce, store=st, trials=7, seed=1, executor=InlineExecutor(), run_fn=fake_run, resolve=None, retrain=False)
    assert rest.n_trials == 7 and rest.n_complete == 7
    assert [t["params"] for t in rest.trials[:3]] == [t["params"] for t in full.trials[:3]]
    assert rest.trials[3]["params"].keys() == {"optim.lr"} and rest.trials[3]["state"] == "COMPLETE"
    # the first three trials' runs were not re-run
    assert all(st.get(t["run_hash"])["attempts"] == 1 for t in rest.trials)
    # trial n is drawn from stream search/n: the resumed search continues the fresh one's draws
    assert [t["params"] for t in rest.trials[4:6]] == [t["params"] for t in full.trials[4:6]]


@pytest.mark.slow
def test_real_tiny_digits_search(tmp_path):
    train = pytest.importorskip("nclab.train")
    if not hasattr(train, "train"):
        pytest.skip("trainer not available")
    from nclab.sweep.trainer import train_run

    base = {"epochs": 3, "batch_size": 64, "device": "cpu", "dataset": {"name": "digits", "classes": 2},
            "noise": {"kind": "symmetric", "rate": 0.2}, "loss": {"name": "ls"},
            "model": {"name": "mlp", "depth": 2, "width": 32}}
    res = run_search(base, store=RunStore(tmp_path), trials=2, seed=0, executor=InlineExecutor(), run_fn=train_run)
    assert res.n_complete == 2 and 0.0 <= res.best_value <= 1.0
    assert res.retrain_final is not None and "test_acc" in res.retrain_final
