"""Stacked training: a member of a stack is the run trained alone (same thread count), bit for bit.

A solo run is a stack of one. The model-level float64 tests compare the stacked model
with torch's own modules and optimizers (the algorithm, not float32 summation order).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nclab.models import build_model
from nclab.seeding import torch_generator
from nclab.store.files import read_jsonl
from nclab.train import TrainConfig, load_checkpoint, train
from nclab.train.stacked import group_stacks, stack_key, train_stack
from nclab.train.stacked_model import StackedModel, StackedOptimizer, stackable, stacked_ce_ls_loss

TIMING = {"elapsed_s", "epoch_time_s", "eval_time_s"}
# Nearest-class-centre mismatch counts argmax disagreements: samples whose ReLU features are
# (numerically) zero give exactly tied logits, and a 1e-17 difference in summation order
# flips them. Every continuous quantity is compared; these discrete rates are not.
DISCRETE = ("ncc_mismatch",)




def cfg(**over) -> TrainConfig:
    base = {
        "epochs": 4, "batch_size": 32, "eval_every": 2, "checkpoint_every": 1,
        "dataset": {"name": "digits", "classes": 2},
        "noise": {"kind": "symmetric_all", "rate": 0.2},
        "model": {"name": "mlp", "depth": 2, "width": 24},
        "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return TrainConfig.from_dict(base)


def _close(va, vb, tol: float) -> bool:
    if isinstance(va, list) and isinstance(vb, list):
        return len(va) == len(vb) and all(_close(x, y, tol) for x, y in zip(va, vb))
    if isinstance(va, float) and isinstance(vb, float):
        return va == pytest.approx(vb, rel=tol, abs=tol, nan_ok=True)
    return va == vb


def assert_records_close(a: list[dict], b: list[dict], *, tol: float) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            if k in TIMING or (tol > 0 and any(d in k for d in DISCRETE)):
                continue
            assert _close(ra[k], rb[k], tol), (k, ra[k], rb[k])


# ---------------------------------------------------------------- the stacked model itself
@pytest.mark.parametrize("opt", ["sgd", "nesterov", "adam"])
def test_stacked_model_and_optimizer_equal_solo(opt):
    torch.set_default_dtype(torch.float64)
    try:
        k, shape = 3, (12,)
        members = [build_model("mlp", input_shape=shape, num_classes=3, generator=torch_generator(s, "init"),
                               depth=3, width=16) for s in range(k)]
        solo = [copy.deepcopy(m) for m in members]
        st = StackedModel(members)
        lrs = [0.1, 0.03, 0.2]  # per-member learning rates
        if opt == "adam":
            so = StackedOptimizer(st.parameters(), name="adam", lr=torch.tensor(lrs) / 10,
                                  momentum=torch.zeros(k), weight_decay=torch.full((k,), 1e-3),
                                  transposed=st.transposed_flags())
            solo_opt = [torch.optim.Adam(m.parameters(), lr=lr / 10, weight_decay=1e-3) for m, lr in zip(solo, lrs)]
        else:
            nest = opt == "nesterov"
            so = StackedOptimizer(st.parameters(), name="sgd", lr=torch.tensor(lrs), momentum=torch.full((k,), 0.9),
                                  weight_decay=torch.full((k,), 5e-4), nesterov=nest, transposed=st.transposed_flags())
            solo_opt = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=nest)
                        for m, lr in zip(solo, lrs)]
        alpha = torch.tensor([0.0, 0.1, 0.3])
        g = torch.Generator().manual_seed(0)
        for _ in range(6):
            x = torch.randn(k, 10, *shape, generator=g)
            y = torch.randint(0, 3, (k, 10), generator=g)
            loss = stacked_ce_ls_loss(st(x), y, alpha).sum()
            so.zero_grad()
            loss.backward()
            so.step()
            for i in range(k):
                li = F.cross_entropy(solo[i](x[i]), y[i], label_smoothing=float(alpha[i]))
                solo_opt[i].zero_grad()
                li.backward()
                solo_opt[i].step()
        for i in range(k):
            ref = solo[i].state_dict()
            got = st.member_state(i)
            assert list(got) == list(ref)
            for key in ref:
                assert torch.allclose(got[key].double(), ref[key].double(), rtol=1e-10, atol=1e-12), key
            # the optimizer state exports in torch.optim's layout and loads into a solo optimizer
            sd = solo_opt[i].state_dict()
            mine = so.member_state(i)
            for idx, st_ref in sd["state"].items():
                for name_, t in st_ref.items():
                    assert torch.allclose(torch.as_tensor(mine[idx][name_]).double(), torch.as_tensor(t).double(),
                                          rtol=1e-9, atol=1e-12)
        st.eval()
        [m.eval() for m in solo]
        x = torch.randn(k, 7, *shape, generator=g)
        with torch.no_grad():
            out = st(x)
            for i in range(k):
                assert torch.allclose(out[i], solo[i](x[i]), rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_stacked_model_select_and_load_member():
    members = [build_model("mlp", input_shape=(5,), num_classes=2, generator=torch_generator(s, "init"), depth=2, width=4)
               for s in range(4)]
    st = StackedModel(members)
    st.select([3, 1])
    assert st.size == 2
    for key, t in members[3].state_dict().items():
        assert torch.equal(st.member_state(0)[key], t)
    st.load_member(1, members[0].state_dict())
    for key, t in members[0].state_dict().items():
        assert torch.equal(st.member_state(1)[key], t)
    with pytest.raises(ValueError, match="architecture"):
        StackedModel([members[0], build_model("mlp", input_shape=(5,), num_classes=2,
                                              generator=torch_generator(0, "init"), depth=2, width=5)])
    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=2, generator=torch_generator(0, "init"), width=4)
    assert stackable(members[0]) and not stackable(cnn)
    with pytest.raises(ValueError, match="MLP"):
        StackedModel([cnn])


# ---------------------------------------------------------------- stack vs solo runs
def _same_files(a: Path, b: Path) -> None:
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.name != ".nclab.lock")
    assert names(a) == names(b)


def _user_model(*, input_shape, num_classes):  # nclab initialises it from the run's "init" stream
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, num_classes))


def _user_data():
    from sklearn.datasets import load_digits

    x, y = load_digits(n_class=2, return_X_y=True)
    return {"x": (x / 16.0).astype(np.float32)[:240], "y": y[:240]}


@pytest.mark.parametrize("user", [False, True], ids=["mlp-stacked", "user-data-and-model"])
def test_a_run_gives_the_same_bits_alone_and_in_any_stack(tmp_path, user):
    """float32: solo, a stack of one and a member of a stack of 4 write identical records,
    features and dynamics. nclab's MLP trains as one stacked model, a user's model module by
    module: either way the engine depends on the model, not on the stack."""
    configs = [cfg(seed=s, loss={"name": loss}, optim={"lr": lr}, record_dynamics=True)
               for s, loss, lr in [(0, "ce", 0.05), (0, "ls", 0.05), (1, "ce", 0.02), (2, "ls", 0.08)]]
    kw = {"dataset": _user_data(), "model": _user_model} if user else {}
    stacked = train_stack(configs, run_dirs=[tmp_path / f"s{i}" for i in range(4)], **kw)
    (one,) = train_stack(configs[2:3], run_dirs=[tmp_path / "one"], **kw)
    from nclab.store.dynamics import load_dynamics

    for i, (c, r) in enumerate(zip(configs, stacked)):
        solo = train(c, run_dir=tmp_path / f"o{i}", progress=False, **kw)
        assert r.status == solo.status == "completed"
        assert_records_close(r.history, solo.history, tol=0.0)
        _same_files(tmp_path / f"s{i}", tmp_path / f"o{i}")
        fs, fo = np.load(tmp_path / f"s{i}" / "features.npz"), np.load(tmp_path / f"o{i}" / "features.npz")
        assert all(np.array_equal(fs[k], fo[k]) for k in fo.files)
        assert np.array_equal(np.asarray(load_dynamics(tmp_path / f"s{i}").margins),
                              np.asarray(load_dynamics(tmp_path / f"o{i}").margins))
        env = json.loads((tmp_path / f"s{i}" / "env.json").read_text())
        assert env["stack"]["size"] == 4 and env["threads"]["torch_threads"] == 1
        assert (env["data"].get("source"), "model" in env["data"]) == (("python", True) if user else (None, False))
    assert_records_close(one.history, stacked[2].history, tol=0.0)
    assert len({json.dumps(r.final["train_loss"]) for r in stacked}) == 4  # the members differ


def test_member_checkpoint_resumes_solo(tmp_path):
    """A stack stopped by max_epochs leaves solo-format checkpoints: solo resume == solo run."""
    configs = [cfg(seed=5, epochs=5), cfg(seed=6, epochs=5)]
    res = train_stack(configs, run_dirs=[tmp_path / "s", tmp_path / "t"], max_epochs=2)
    assert [r.status for r in res] == ["stopped"] * 2 and res[0].epoch == 2
    resumed = train(configs[0], run_dir=tmp_path / "s", resume=True, progress=False)
    solo = train(configs[0], run_dir=tmp_path / "o", progress=False)
    assert_records_close(resumed.history, solo.history, tol=0.0)


def test_diverging_member_stops_alone(tmp_path):
    configs = [cfg(seed=0), cfg(seed=1, optim={"lr": 1e12, "momentum": 0.0}), cfg(seed=2)]
    res = train_stack(configs, run_dirs=[tmp_path / f"r{i}" for i in range(3)])
    assert [r.status for r in res] == ["completed", "diverged", "completed"]
    assert res[1].diverged_epoch == 1 and "diverged in epoch 1" in res[1].message
    st = json.loads((tmp_path / "r1" / "status.json").read_text())
    assert st["status"] == "diverged" and st["diverged_epoch"] == 1
    assert (tmp_path / "r0" / "features.npz").exists() and not (tmp_path / "r1" / "features.npz").exists()
    # the healthy members are unaffected by the diverged one
    alone = train_stack([configs[0]], run_dirs=[tmp_path / "alone"])
    assert_records_close(res[0].history, alone[0].history, tol=0.0)


def test_members_stop_at_their_own_terminal_epoch(tmp_path):
    stop = {"train_acc": 0.97, "patience": 2}
    configs = [cfg(seed=s, epochs=40, eval_every=100, model={"width": 64}, noise={"rate": 0.0}, stop=stop,
                   optim={"lr": lr}) for s, lr in [(0, 0.05), (1, 0.005)]]
    res = train_stack(configs, run_dirs=[tmp_path / "a", tmp_path / "b"])
    solo = [train(c, run_dir=tmp_path / f"o{i}", progress=False) for i, c in enumerate(configs)]
    for r, o in zip(res, solo):
        assert r.final["stop_reason"] == o.final["stop_reason"]
        assert r.final["terminal_epoch"] == o.final["terminal_epoch"]
        assert r.epoch == o.epoch
    assert res[0].epoch != res[1].epoch  # one left the stack before the other


def test_incompatible_runs_refused_and_grouping():
    a, b = cfg(seed=0), cfg(seed=1, model={"width": 8})
    assert stack_key(a) == stack_key(cfg(seed=9, loss={"name": "ls"}, optim={"lr": 0.3}))
    assert stack_key(a) != stack_key(b) and stack_key(a) != stack_key(cfg(threads=2))
    with pytest.raises(Exception, match="cannot share a stack"):
        train_stack([a, b], run_dirs=["/nonexistent/a", "/nonexistent/b"])
    groups = group_stacks([a, b, a, a, b], size=2)
    assert [len(g) for g in groups] == [2, 1, 2]


# ---------------------------------------------------------------- kill -9 and resume
def test_killed_stack_resumes_to_uninterrupted_result(tmp_path):
    root = tmp_path / "killed"
    configs = [cfg(seed=s, epochs=8, eval_every=2, model={"width": 48}) for s in range(3)]
    pid = os.fork()  # a child of this process (torch imported, one thread): no interpreter start-up
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            train_stack(configs, run_dirs=[root / f"m{i}" for i in range(3)])
            code = 0
        finally:
            os._exit(code)
    ckpt = root / "m2" / "checkpoints" / "last.pt"
    t0 = time.time()
    try:
        while time.time() - t0 < 60 and os.waitpid(pid, os.WNOHANG) == (0, 0):
            if ckpt.exists() and len(read_jsonl(root / "m0" / "metrics.jsonl")) >= 1:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("the child finished before it could be killed")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert json.loads((root / "m0" / "status.json").read_text())["status"] == "running"
    resumed = train_stack(configs, run_dirs=[root / f"m{i}" for i in range(3)], resume=True)
    clean = train_stack(configs, run_dirs=[tmp_path / f"c{i}" for i in range(3)])
    for r, c in zip(resumed, clean):
        assert r.status == c.status == "completed"
        assert_records_close(r.history, c.history, tol=0.0)


# ---------------------------------------------------------------- threads
def test_threads_set_per_run_and_recorded(tmp_path):
    torch.set_num_threads(2)
    r = train(cfg(epochs=1, threads=1), run_dir=tmp_path / "r", progress=False)
    assert torch.get_num_threads() == 2  # restored after the run
    env = json.loads((r.run_dir / "env.json").read_text())
    assert env["threads"]["torch_threads"] == 1 and env["sessions"][-1]["torch_threads"] == 1
    assert env["threads"]["torch_version"] == torch.__version__


def test_classifier_without_bias_stacks_and_saves_no_b(tmp_path):
    c = cfg(seed=4, model={"classifier_bias": False})
    (r,) = train_stack([c, cfg(seed=5, model={"classifier_bias": False})], run_dirs=[tmp_path / "s", tmp_path / "t"])[:1]
    solo = train(c, run_dir=tmp_path / "o", progress=False)
    assert_records_close(r.history, solo.history, tol=0.0)
    for d in ("s", "o"):
        f = np.load(tmp_path / d / "features.npz")
        assert "W" in f and "b" not in f


def _train_either(stacked: bool, configs: list[TrainConfig], dirs: list[Path], **kw):
    """The runs as one stack, or one after another with ``train``."""
    if stacked:
        return train_stack(configs, run_dirs=dirs, **kw)
    lgs = kw.pop("loggers", None) or [None] * len(configs)
    return [train(c, run_dir=d, loggers=lg, **kw) for c, d, lg in zip(configs, dirs, lgs)]


@pytest.mark.parametrize("stacked", [False, True])
def test_light_eval_mode_at_a_max_epochs_cap_records_no_suite(tmp_path, stacked):
    """A session capped by max_epochs on an evaluation epoch is not the run's end: light record."""
    configs = [cfg(seed=s, epochs=4, eval_every=2, eval_mode="light") for s in (1, 2)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    res = _train_either(stacked, configs, dirs, max_epochs=2, progress=False)
    for r in res:
        assert r.status == "stopped" and [h["epoch"] for h in r.history] == [2]
        assert "train.nc1" not in r.final and "test_acc" in r.final
    res = _train_either(stacked, configs, dirs, resume=True, progress=False)
    assert all(r.status == "completed" and "train.nc1" in r.final for r in res)


class _SignalAt:
    """A metrics logger that sends this process SIGINT when it sees epoch ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch, self.closed = epoch, None

    def log(self, record):
        if record["epoch"] == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)

    def close(self, *, status):
        self.closed = status


@pytest.mark.parametrize("stacked", [False, True])
def test_sigint_stops_cleanly_after_the_epoch_and_resumes(tmp_path, stacked):
    configs = [cfg(seed=s, epochs=6, eval_every=2, checkpoint_every=5) for s in (1, 2)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    lgs = [[_SignalAt(2)], []]
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN in a background job
    res = _train_either(stacked, configs, dirs, handle_signals=True, loggers=lgs, progress=False)
    assert signal.getsignal(signal.SIGINT) == before  # restored
    n_stopped = 2 if stacked else 1  # one after another, the signal reaches the first run only
    for r in res[:n_stopped]:
        assert r.status == "interrupted" and r.epoch == 2 and r.signum == signal.SIGINT
        assert "interrupted by SIGINT after epoch 2" in r.message
        assert json.loads((r.run_dir / "status.json").read_text())["status"] == "interrupted"
        assert load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    assert lgs[0][0].closed == "interrupted"
    resumed = _train_either(stacked, configs, dirs, resume=True, progress=False)
    clean = train_stack(configs, run_dirs=[tmp_path / "c", tmp_path / "d"])
    for r, c in zip(resumed, clean):
        assert r.status == "completed"
        assert_records_close(r.history, c.history, tol=0.0)


@pytest.mark.parametrize("stacked", [False, True])
def test_progress_lines_for_every_run(tmp_path, stacked, capsys, monkeypatch):
    monkeypatch.setenv("NCLAB_PROGRESS_SECONDS", "0")
    for k in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(k, raising=False)
    configs = [cfg(seed=s, epochs=2, name=f"run{s}") for s in (1, 2)]
    _train_either(stacked, configs, [tmp_path / "a", tmp_path / "b"], progress=True)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": epoch " in ln]
    assert sorted(ln.split()[0] + ln.split()[2] for ln in err) == ["run1:1/2", "run1:2/2", "run2:1/2", "run2:2/2"]


@pytest.mark.parametrize("stacked", [False, True])
def test_light_eval_mode_records_the_suite_only_at_the_end(tmp_path, stacked):
    c = cfg(seed=1, epochs=4, eval_every=1, eval_mode="light", record_dynamics=True)
    full = cfg(seed=1, epochs=4, eval_every=1, record_dynamics=True)
    if stacked:
        (r,) = train_stack([c], run_dirs=[tmp_path / "light"])
        (f,) = train_stack([full], run_dirs=[tmp_path / "full"])
    else:
        r = train(c, run_dir=tmp_path / "light", progress=False)
        f = train(full, run_dir=tmp_path / "full", progress=False)
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
    assert all("train.nc1" not in h and "test_acc" in h for h in r.history[:-1])  # losses/accuracies only
    assert "train.nc1" in r.history[-1] and "train.memorization" in r.history[-1]
    assert all("train.nc1" in h for h in f.history)
    # the training itself is the same: the light run's final record equals the full run's
    assert_records_close([r.history[-1]], [f.history[-1]], tol=0.0)
    from nclab.store.dynamics import load_dynamics

    assert len(load_dynamics(tmp_path / "light").epochs) == 4  # margins every epoch


def test_light_eval_mode_gives_the_suite_to_a_terminal_stop(tmp_path):
    c = cfg(seed=0, epochs=60, eval_every=1, eval_mode="light", model={"width": 64}, noise={"rate": 0.0},
            stop={"train_acc": 0.97, "patience": 2})
    r = train(c, run_dir=tmp_path / "r", progress=False)
    assert r.final["stop_reason"] == "terminal" and r.epoch < 60
    assert "train.nc1" in r.final and all("train.nc1" not in h for h in r.history[:-1])


def test_on_epoch_reports_the_index_into_configs(tmp_path):
    configs = [cfg(seed=0, epochs=2), cfg(seed=1, epochs=3)]
    seen: list[tuple[int, int]] = []
    train_stack(configs, run_dirs=[tmp_path / "a", tmp_path / "b"], on_epoch=lambda k, e: seen.append((k, e)))
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
