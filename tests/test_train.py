"""Trainer: determinism, resume equivalence, run-directory rules, divergence, end-to-end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from nclab.config import ConfigError
from nclab.store.files import append_jsonl, read_jsonl
from nclab.train import (
    TIMING_KEYS,
    CheckpointError,
    RunDirError,
    TrainConfig,
    batch_bounds,
    load_checkpoint,
    lr_at,
    train,
)
from nclab.train.engine import StackEngine

TINY = [
    "epochs=3", "batch_size=32", "device=cpu", "dataset.name=digits", "dataset.classes=2",
    "noise.kind=symmetric", "noise.rate=0.2", "model.depth=2", "model.width=32", "optim.lr=0.05",
]


def cfg(*extra: str) -> TrainConfig:
    return TrainConfig.from_sources(overrides=[*TINY, *extra])




def _model_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    assert torch.equal(a["batch_rng"], b["batch_rng"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 3-epoch run with a validation split (shared by several tests)."""
    d = tmp_path_factory.mktemp("ref")
    return train(cfg("dataset.val_fraction=0.2"), run_dir=d, progress=False)


def test_end_to_end_digits_records_and_files(reference_run):
    r = reference_run
    assert r.status == "completed" and r.epoch == 3
    assert [rec["epoch"] for rec in r.history] == [1, 2, 3]
    f = r.final
    head = ["epoch", "lr", "elapsed_s", "train_loss", "train_acc_noisy", "train_acc_clean", "test_loss", "test_acc"]
    assert list(f)[: len(head)] == head
    for key in ("val_loss", "val_acc_noisy", "train.nc1", "train.memorization", "train.dilation", "test.nc1",
                "train.nc2_etf_error_weights", "test.accuracy"):
        assert isinstance(f[key], float) and math.isfinite(f[key]), key
    assert f["test_acc"] > 0.8  # chance is 0.5 (binary digits 0 vs 1)
    assert f["train_acc_clean"] > f["train_acc_noisy"]  # the model has not yet memorised the flips
    assert f["test.accuracy"] == pytest.approx(f["test_acc"])
    # files of the run directory
    d = r.run_dir
    assert TrainConfig.from_sources(d / "config.yaml") == r.config
    env = json.loads((d / "env.json").read_text())
    assert {"python", "torch", "numpy", "seed", "device", "hostname", "git_commit"} <= set(env)
    assert env["device"] == "cpu" and env["data"]["n_val"] > 0
    noise = np.load(d / "noise.npz")
    assert noise["noisy"].shape == noise["clean"].shape and noise["transition"].shape == (2, 2)
    assert 0.1 < float(np.mean(noise["noisy"] != noise["clean"])) < 0.3
    assert len(set(noise["train_idx"]) & set(noise["val_idx"])) == 0
    assert f["train.n_samples"] == len(noise["train_idx"])  # metrics on the training part only
    assert json.loads((d / "status.json").read_text())["status"] == "completed"


def test_deterministic_given_seed(tmp_path, reference_run):
    again = train(cfg("dataset.val_fraction=0.2"), run_dir=tmp_path / "a", progress=False)
    _assert_states_equal(_model_state(reference_run.run_dir), _model_state(again.run_dir))
    assert _strip_timing(again.history) == _strip_timing(reference_run.history)
    other = train(cfg("dataset.val_fraction=0.2", "seed=1", "epochs=1"), run_dir=tmp_path / "b", progress=False)
    assert not torch.equal(_model_state(other.run_dir)["model"]["classifier.weight"],
                           load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]["classifier.weight"])


def test_resume_is_bit_identical(tmp_path, reference_run):
    d = tmp_path / "run"
    part = train(cfg("dataset.val_fraction=0.2"), run_dir=d, progress=False, max_epochs=1)
    assert part.status == "stopped" and part.epoch == 1 and "resume" in part.message
    # a crash after the checkpoint may leave records beyond it: resume must drop and redo them
    append_jsonl(d / "metrics.jsonl", {**part.final, "epoch": 2, "test_acc": -1.0})
    done = train(cfg("dataset.val_fraction=0.2"), run_dir=d, progress=False, resume=True)
    assert done.status == "completed" and done.epoch == 3
    _assert_states_equal(_model_state(reference_run.run_dir), _model_state(d))
    assert _strip_timing(read_jsonl(d / "metrics.jsonl")) == _strip_timing(reference_run.history)
    env = json.loads((d / "env.json").read_text())
    assert [s["start_epoch"] for s in env["sessions"]] == [0, 1]


def test_run_dir_rules(tmp_path):
    d = tmp_path / "run"
    train(cfg("epochs=1"), run_dir=d, progress=False)
    with pytest.raises(RunDirError, match=r"different config.*optim.lr: 0.05 -> 0.02"):
        train(cfg("epochs=1", "optim.lr=0.02"), run_dir=d, progress=False)
    with pytest.raises(RunDirError, match="already holds a run of this config"):
        train(cfg("epochs=1"), run_dir=d, progress=False)
    r = train(cfg("epochs=1", "optim.lr=0.02"), run_dir=d, progress=False, overwrite=True)
    assert r.status == "completed" and len(read_jsonl(d / "metrics.jsonl")) == 1
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(cfg(), run_dir=tmp_path / "empty", progress=False, resume=True)


def test_corrupt_and_mismatched_checkpoint(tmp_path):
    d = tmp_path / "run"
    c = cfg("epochs=2")
    train(c, run_dir=d, progress=False, max_epochs=1)
    ckpt = d / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:-100] + bytes(100))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        train(c, run_dir=d, progress=False, resume=True)
    ckpt.write_bytes(good)
    with pytest.raises(CheckpointError, match="different configuration"):
        load_checkpoint(ckpt, config_hash=cfg("epochs=5").config_hash())
    # a readable-looking sidecar does not make garbage loadable
    ckpt.write_bytes(b"not a torch file")
    side = d / "checkpoints" / "last.pt.json"
    import hashlib

    side.write_text(json.dumps({"sha256": hashlib.sha256(b"not a torch file").hexdigest(), "epoch": 1}))
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only torch file"):
        load_checkpoint(ckpt)


def test_divergence_with_huge_lr(tmp_path):
    r = train(cfg("optim.lr=1e6", "epochs=2", "loss.name=mse"), run_dir=tmp_path / "nan", progress=False)
    assert r.status == "diverged" and r.epoch == 0
    assert "diverged in epoch 1" in r.message and "no checkpoint" in r.message
    assert r.history == []


def test_divergence_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = StackEngine.train_epoch
    calls = {"n": 0}

    def poisoned(self, lrs):
        calls["n"] += 1
        losses = real(self, lrs)
        if calls["n"] == 2:
            with torch.no_grad():
                self.model.params["classifier.weight"].fill_(float("nan"))
        return losses

    monkeypatch.setattr(StackEngine, "train_epoch", poisoned)
    d = tmp_path / "run"
    r = train(cfg(), run_dir=d, progress=False)
    assert r.status == "diverged" and r.epoch == 1
    assert "epoch 2" in r.message and "epoch 1" in r.message
    state = _model_state(d)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [rec["epoch"] for rec in read_jsonl(d / "metrics.jsonl")] == [1]
    assert json.loads((d / "status.json").read_text())["status"] == "diverged"


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in OptimConfig; did you mean 'lr'"):
        cfg("optim.lrr=0.1")
    with pytest.raises(ConfigError, match=r"did you mean 'optim.lr'"):
        cfg("lr=0.1")
    with pytest.raises(ConfigError, match=r"noise.rate must lie in \[0.0, 1.0\]; got 1.5"):
        cfg("noise.rate=1.5")
    with pytest.raises(ConfigError, match=r"loss.alpha must lie in \[0.0, 1.0\)"):
        cfg("loss.alpha=1.0")
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*did you mean 'resnet18'"):
        cfg("model.name=resnet19")
    with pytest.raises(ConfigError, match="unknown noise.kind 'symetric'.*did you mean 'symmetric'"):
        cfg("noise.kind=symetric")
    with pytest.raises(ConfigError, match="noise.kind is 'none' but noise.rate is 0.2"):
        cfg("noise.kind=none")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nmodel:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        TrainConfig.from_sources(bad)


def test_schedule_matches_pytorch_schedulers():
    base = 0.1
    for name, extra, sched in [
        ("step", {"step_size": 3, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        ("multistep", {"milestones": [2, 5], "gamma": 0.1},
         lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], 0.1)),
        ("cosine", {}, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8)),
    ]:
        c = cfg(f"schedule.name={name}", *[f"schedule.{k}={v}" for k, v in extra.items()])
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
        s = sched(opt)
        for epoch in range(1, 9):
            got = lr_at(c.schedule, base_lr=base, epoch=epoch, total_epochs=8)
            assert got == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (name, epoch)
            opt.step()
            s.step()


def test_batch_bounds_never_leave_a_single_sample():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(3, 8) == [(0, 3)]


def test_latent_classes_run_with_progress_bar(tmp_path, capsys):
    r = train(cfg("epochs=2", "noise.latent_fraction=0.3"), run_dir=tmp_path / "lat", progress=True)
    cap = capsys.readouterr()
    assert "NC1" in cap.out + cap.err  # progress goes to stderr
    f = r.final
    assert f["train.num_classes"] == 4 and f["test.num_classes"] == 2
    assert f["test_acc"] > 0.7 and math.isfinite(f["train.memorization"])


def test_cli_train(tmp_path):
    from nclab.cli.train import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer collapses a single-command app; keep "train" a subcommand
    runner = CliRunner()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 3\nmodel:\n  depth: 2\n  width: 16\ndevice: cpu\n")
    d = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cfg_file), "--set", "optim.lr=0.05", "--run-dir", str(d),
                              "--no-progress", "--max-epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "stopped at epoch 2/3" in res.output and "test_acc" in res.output
    res = runner.invoke(app, ["train", str(cfg_file), "--set", "optim.lr=0.05", "--run-dir", str(d),
                              "--no-progress", "--resume"])
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(d / "metrics.jsonl")) == 3
    res = runner.invoke(app, ["train", str(cfg_file), "--set", "optim.lrr=0.05", "--run-dir", str(d)])
    assert res.exit_code == 2 and "did you mean 'lr'" in res.output


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists(), reason="system Fashion-MNIST copy absent")
def test_end_to_end_fashion_mnist(tmp_path):
    r = train(cfg("dataset.name=fashion-mnist", "dataset.per_class=300", "epochs=2", "model.width=64"),
              run_dir=tmp_path / "fm", progress=False)
    f = r.final
    assert r.status == "completed"
    assert f["test_acc"] > 0.8  # T-shirt vs Trouser; chance 0.5
    assert all(math.isfinite(f[k]) for k in ("train.nc1", "test.nc1", "train.memorization", "train.dilation"))


@pytest.mark.parametrize("model", ["model.name=cnn", "model.name=resnet18"])
def test_conv_models_train(tmp_path, model):
    extra = ["model.channels=4", "model.feature_dim=16"] if "cnn" in model else ["model.width_multiplier=0.0625"]
    r = train(cfg("epochs=1", model, *extra), run_dir=tmp_path / "m", progress=False)
    f = r.final
    assert r.status == "completed" and f["train.feature_dim"] > 2
    assert math.isfinite(f["train.nc1"]) and math.isfinite(f["test_loss"])


def test_cuda_request_without_gpu_is_clear(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="device 'cuda' requested"):
        train(cfg("device=cuda"), run_dir=tmp_path / "c", progress=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(tmp_path):
    r = train(cfg("device=auto", "epochs=2"), run_dir=tmp_path / "gpu", progress=False)
    assert json.loads((r.run_dir / "env.json").read_text())["device"].startswith("cuda")
    assert r.final["test_acc"] > 0.8 and math.isfinite(r.final["train.nc1"])


def test_features_file_matches_final_record_and_test_dilation(reference_run):
    """features.npz holds the final train features; the metrics engine on it reproduces the
    trainer's own final train.* record, and test dilation is measured (test labels are clean)."""
    from nclab.metrics import nc_metrics
    from nclab.store.files import load_feature_file

    run_dir = reference_run.run_dir
    final = read_jsonl(Path(run_dir) / "metrics.jsonl")[-1]
    f = load_feature_file(Path(run_dir) / "features.npz")
    assert f["features"].shape[0] == final["train.n_samples"]
    r = nc_metrics(f["features"], f["labels"], weight=f["W"], bias=f["b"], clean_labels=f["clean_labels"])
    for key in ("nc1", "memorization", "dilation", "nc2_orthogonal_error_means", "realized_noise_rate"):
        assert r[key] == pytest.approx(final[f"train.{key}"], rel=1e-5), key
    assert final["test.dilation"] is not None and math.isfinite(final["test.dilation"])
    assert final["test.realized_noise_rate"] == 0.0 and final["test.memorization"] is None


def test_record_dynamics_through_the_trainer_and_resume(tmp_path):
    """record_dynamics writes one margin vector per evaluation; an interrupted and resumed
    run ends with the same margins as an uninterrupted one; nclab detect can score it."""
    from nclab.detect import score_run
    from nclab.store.dynamics import load_dynamics

    full = train(cfg("record_dynamics=true"), run_dir=tmp_path / "full", progress=False)
    part = cfg("record_dynamics=true")
    train(part, run_dir=tmp_path / "part", progress=False, max_epochs=2)
    train(part, run_dir=tmp_path / "part", progress=False, resume=True)
    a, b = load_dynamics(full.run_dir), load_dynamics(tmp_path / "part")
    assert list(a.epochs) == [1, 2, 3] and list(b.epochs) == [1, 2, 3]
    assert np.array_equal(a.margins, b.margins)
    assert a.margins.shape[1] == full.final["train.n_samples"]
    sus = score_run(full.run_dir, score="combined")
    assert sus.quality()["auroc"] > 0.5
