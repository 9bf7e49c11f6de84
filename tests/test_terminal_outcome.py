"""The terminal phase as an outcome: recorded every epoch, never a stop, the same in the solo
and the stacked trainer."""

from __future__ import annotations

import pytest
import torch

from nclab.train.stop import StopTracker


def _first_from_which_it_holds(accs: list[float], a: float) -> int | None:
    """Reference: the first epoch e (1-based) with accs[e-1:] all >= a; None if the last is below."""
    out = None
    for e in range(len(accs), 0, -1):
        if accs[e - 1] >= a:
            out = e
        else:
            break
    return out


@pytest.mark.parametrize("accs", [
    [0.5, 0.9, 1.0, 1.0, 1.0],
    [1.0, 1.0, 0.9, 1.0, 1.0],  # a dip: the outcome is the last streak's start
    [1.0, 1.0, 1.0, 1.0, 0.99],  # below at the end: never
    [0.1, 0.2, 0.3],
])
def test_outcome_is_the_first_epoch_from_which_accuracy_holds(accs):
    t = StopTracker.from_config(None, terminal_acc=0.999)
    assert t.active and not t.fired
    for e, a in enumerate(accs, 1):
        assert t.update(e, a) is False  # recording never stops a run
    assert t.terminal_epoch == _first_from_which_it_holds(accs, 0.999)
    assert t.summary(finished_by_rule=False) == {"stop_reason": "epochs", "terminal_epoch": t.terminal_epoch}


def test_outcome_survives_a_checkpoint_and_the_stop_rule_keeps_its_meaning():
    t = StopTracker.from_config(None, terminal_acc=0.9)
    for e, a in enumerate([0.5, 0.95, 0.97], 1):
        t.update(e, a)
    u = StopTracker.from_config(None, terminal_acc=0.9)
    u.load(t.state())
    u.update(4, 0.99)
    assert u.terminal_epoch == 2
    # an old checkpoint (before the outcome existed) carried the stop rule's epoch only
    old = StopTracker(train_acc=0.9, patience=2)
    old.load({"streak": 2, "terminal_epoch": 3})
    assert old.fired and old.terminal_epoch == 3

    class _Stop:
        train_acc, patience = 0.9, 2

    s = StopTracker.from_config(_Stop())
    fired = [s.update(e, a) for e, a in enumerate([0.95, 0.5, 0.95, 0.96], 1)]
    assert fired == [False, False, False, True] and s.terminal_epoch == 3


def test_solo_and_stacked_record_the_outcome_without_stopping(tmp_path):
    from nclab.train import TrainConfig, train
    from nclab.train.stacked import train_stack

    torch.set_num_threads(1)
    base = {"epochs": 12, "batch_size": 16, "eval_every": 1, "eval_mode": "light", "checkpoint_every": 6,
            "device": "cpu", "terminal_acc": 0.999, "save_features": False,
            "dataset": {"name": "digits", "classes": 2},
            "noise": {"kind": "symmetric_all", "rate": 0.2}, "model": {"name": "mlp", "depth": 2, "width": 64},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "schedule": {"name": "cosine"}}
    cfgs = [TrainConfig.model_validate({**base, "seed": s, "name": f"s{s}"}) for s in (0, 1)]
    solo = train(cfgs[0], run_dir=tmp_path / "solo", progress=False)
    assert solo.status == "completed" and solo.epoch == 12  # no early stop
    accs = [r["train_acc_noisy"] for r in solo.history]
    assert len(accs) == 12
    assert solo.final["terminal_epoch"] == _first_from_which_it_holds(accs, 0.999)
    assert solo.final["stop_reason"] == "epochs"
    stacked = train_stack(cfgs, run_dirs=[tmp_path / "a", tmp_path / "b"])
    for r in stacked:
        accs = [h["train_acc_noisy"] for h in r.history]
        assert r.epoch == 12 and r.final["terminal_epoch"] == _first_from_which_it_holds(accs, 0.999)
