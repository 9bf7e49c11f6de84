"""nclab.integrations.loggers through train(loggers=...) and `nclab train --log`, read back with
TensorBoard's own event reader and the MLflow client."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nclab.integrations.loggers import (
    JsonlLogger,
    MetricsLogger,
    flatten_params,
    make_loggers,
    scalar_metrics,
)
from nclab.train import TrainConfig, train

torch.set_num_threads(1)

TINY = [
    "epochs=2", "batch_size=64", "device=cpu", "dataset.name=digits", "dataset.classes=2",
    "noise.kind=symmetric", "noise.rate=0.2", "model.depth=2", "model.width=16", "optim.lr=0.05",
]


def _cfg() -> TrainConfig:
    return TrainConfig.from_sources(overrides=list(TINY))


def _tb_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite tracking store for the module: MLflow's schema migrations take seconds per store."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables
    return uri


def test_default_mlflow_uri(tmp_path, monkeypatch):
    from nclab.integrations.loggers import default_mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_mlflow_uri(tmp_path / "store") == f"sqlite:///{(tmp_path / 'store' / 'mlflow.db').resolve()}"
    monkeypatch.chdir(tmp_path)
    assert default_mlflow_uri() == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"  # one per working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert default_mlflow_uri(tmp_path / "run") == "http://example:5000"


def _mlflow_history(uri: str, experiment: str = "nclab"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, runs


class _Recorder(MetricsLogger):
    def __init__(self):
        self.records, self.closed = [], None

    def log(self, record):
        self.records.append(dict(record))

    def close(self, *, status="completed"):
        self.closed = status


def test_tracking_key_is_one_scheme_without_duplicates():
    from nclab.integrations.loggers import tracking_key, tracking_record

    assert tracking_key("train.nc1") == "train/nc1" and tracking_key("test.dilation") == "test/dilation"
    assert tracking_key("train_loss") == "train/loss" and tracking_key("epoch") is None
    assert tracking_key("test_acc") == tracking_key("test.accuracy") == "test/accuracy"
    rec = {"epoch": 2, "test_acc": 0.9, "test.accuracy": 0.9, "train.nc1": 0.5, "train.num_classes": 2,
           "test.feature_dim": 4, "train.n_samples": 100, "train.nc1_rank": 2, "lr": 0.1, "stop_reason": "epochs"}
    metrics, constants = tracking_record(rec)
    assert metrics == {"test/accuracy": 0.9, "train/nc1": 0.5, "train/nc1_rank": 2.0, "train/lr": 0.1}
    assert constants == {"train/num_classes": 2.0, "test/feature_dim": 4.0, "train/n_samples": 100.0}


def test_scalar_metrics_and_params():
    rec = {"epoch": 3, "a": 1, "b": None, "c": True, "d": float("nan"), "e": [1.0], "f": "x", "g": 2.5}
    assert scalar_metrics(rec) == {"epoch": 3.0, "a": 1.0, "g": 2.5}
    assert flatten_params({"optim": {"lr": 0.1}, "seed": 0}) == {"optim.lr": "0.1", "seed": "0"}


def test_make_loggers_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown logger.*'wandb'.*jsonl, tensorboard, mlflow"):
        make_loggers(["tensorboard", "wandb"], run_dir=tmp_path)
    assert make_loggers(["jsonl"], run_dir=tmp_path) == []  # the trainer writes metrics.jsonl itself
    (lg,) = make_loggers(["jsonl"], run_dir=tmp_path, jsonl_path=tmp_path / "x.jsonl")
    assert isinstance(lg, JsonlLogger)


@pytest.mark.slow
def test_train_calls_loggers_per_record_and_at_the_end(tmp_path, mlflow_uri):
    rec = _Recorder()
    run_dir = tmp_path / "run"
    cfg = _cfg()
    loggers = [rec, *make_loggers(["tensorboard", "mlflow"], run_dir=run_dir, name=cfg.name, params=cfg.to_dict(),
                                  mlflow_uri=mlflow_uri, experiment="library")]
    result = train(cfg, run_dir=run_dir, progress=False, loggers=loggers)
    assert result.status == "completed"
    assert rec.records == result.history and rec.closed == "completed"
    final = result.final

    # TensorBoard: its own event reader, tags with train/ and test/ groups
    tb = _tb_scalars(run_dir / "tensorboard")
    assert [s for s, _ in tb["test/accuracy"]] == [1, 2]
    assert tb["test/accuracy"][-1][1] == pytest.approx(final["test_acc"], rel=1e-6)  # event files hold float32
    assert "test_acc" not in tb and "train/num_classes" not in tb  # no duplicate, no constant series
    assert tb["train/nc1"][-1][1] == pytest.approx(final["train.nc1"], rel=1e-6)
    assert tb["train/memorization"][-1][1] == pytest.approx(final["train.memorization"], rel=1e-6)

    # MLflow: read back with the client
    client, runs = _mlflow_history(mlflow_uri, "library")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == f"{cfg.name}-{cfg.config_hash()[:8]}"
    assert run.data.params["optim.lr"] == "0.05"
    assert run.data.params["train/num_classes"] == "2"  # a constant: once, as a param
    # TensorBoard tags and MLflow metric keys of one run: the same set
    assert set(run.data.metrics) == set(tb)
    hist = client.get_metric_history(run.info.run_id, "train/dilation")
    assert [m.step for m in hist] == [1, 2]
    assert hist[-1].value == final["train.dilation"]  # float64 kept exactly
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figs = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "config.yaml" in arts and figs and all(f.endswith(".png") for f in figs)


@pytest.mark.slow
def test_cli_log_options_and_resume_continues_the_mlflow_run(tmp_path, monkeypatch, mlflow_uri):
    from nclab.cli import _register_all, app

    _register_all()
    uri = mlflow_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    args = ["train", "--no-progress", "--run-dir", str(run_dir), "--log", "tensorboard", "--log", "mlflow"]
    for o in TINY:
        args += ["--set", o]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert not (run_dir / "mlflow.db").exists()  # MLFLOW_TRACKING_URI wins
    client, runs = _mlflow_history(uri)
    assert len(runs) == 1  # the resumed session continued the same MLflow run
    hist = client.get_metric_history(runs[0].info.run_id, "test/accuracy")
    assert sorted(m.step for m in hist) == [1, 2]
    assert runs[0].info.status == "FINISHED"
    tb = _tb_scalars(run_dir / "tensorboard")
    assert sorted({s for s, _ in tb["test/accuracy"]}) == [1, 2]

    bad = runner.invoke(app, [*args, "--overwrite", "--log", "wandb"])
    assert bad.exit_code == 2 and "unknown logger" in bad.output


@pytest.mark.slow
def test_sweep_log_options(tmp_path, monkeypatch, mlflow_uri):
    import yaml

    from nclab.cli import _register_all, app

    _register_all()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    base: dict = {}
    for o in TINY:
        k, v = o.split("=")
        node = base
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = yaml.safe_load(v)
    spec = {"name": "logsweep", "base": base, "grid": {"seed": [0, 1]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "spec.yaml"), "--store", str(store), "--executor", "inline",
                                   "--no-progress", "--log", "tensorboard", "--log", "mlflow"])
    assert res.exit_code == 0, res.output
    run_dirs = sorted((store / "runs").iterdir())
    assert len(run_dirs) == 2
    for rd in run_dirs:
        assert sorted({s for s, _ in _tb_scalars(rd / "tensorboard")["test/accuracy"]}) == [1, 2]
    client, runs = _mlflow_history(mlflow_uri, "logsweep")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    assert len({r.info.run_name for r in runs}) == 2  # unique names
    bad = CliRunner().invoke(app, ["sweep", str(tmp_path / "spec.yaml"), "--store", str(store), "--log", "nope"])
    assert bad.exit_code == 2 and "unknown logger" in bad.output
