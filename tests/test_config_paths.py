"""Relative paths in a config resolve against the config file's folder; shipped names everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.train import TrainConfig, train
from nclab.config import resolve_config_paths


def _npz(path: Path) -> None:
    g = np.random.default_rng(0)
    y = np.arange(40) % 2
    np.savez(path, x=(g.normal(size=(40, 4)) + 3 * y[:, None]).astype(np.float32), y=y)


def test_relative_dataset_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "project"
    cfg_dir.mkdir()
    _npz(cfg_dir / "data.npz")
    (cfg_dir / "cfg.yaml").write_text(
        "epochs: 1\nsave_features: false\neval_mode: light\n"
        "dataset: {name: npz, path: data.npz}\nmodel: {name: mlp, depth: 1, width: 8}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig.from_sources(Path("..") / "project" / "cfg.yaml")
    assert Path(cfg.dataset.path) == (cfg_dir / "data.npz").resolve()
    assert train(cfg, run_dir=elsewhere / "run", progress=False).status == "completed"
    # an override on the command line is relative to the working directory
    cfg2 = TrainConfig.from_sources(cfg_dir / "cfg.yaml", ["dataset.path=local.npz"])
    assert cfg2.dataset.path == "local.npz"


def test_resolve_config_paths_keeps_absolute_and_home_paths(tmp_path):
    data = {"dataset": {"path": "/abs/x.npz", "data_dir": "~/data"}, "epochs": 3}
    assert resolve_config_paths(data, tmp_path) == data
    rel = {"dataset": {"name": "mnist", "data_dir": "data"}}
    assert resolve_config_paths(rel, tmp_path)["dataset"]["data_dir"] == str(tmp_path / "data")
    assert rel["dataset"]["data_dir"] == "data"  # the input is not modified


def test_sweep_spec_paths_relative_to_their_files(tmp_path):
    from nclab.sweep import load_spec

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "train.yaml").write_text("dataset: {name: npz, path: d.npz}\n")
    (tmp_path / "spec.yaml").write_text("name: s\nbase_file: base/train.yaml\nbase: {dataset: {data_dir: cache}}\n"
                                        "grid: {seed: [0, 1]}\n")
    _, base = load_spec(tmp_path / "spec.yaml")
    assert base["dataset"]["path"] == str(tmp_path / "base" / "d.npz")
    assert base["dataset"]["data_dir"] == str(tmp_path / "cache")


def test_sweep_and_search_accept_shipped_names(tmp_path, monkeypatch):
    _register_all()
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name must come from the package
    runner = CliRunner()
    out = runner.invoke(app, ["sweep", "sweeps/digits-md", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert out.output.strip().endswith("30 runs")
    bad = runner.invoke(app, ["search", "no-such-config", "--store", str(tmp_path / "s")])
    assert bad.exit_code == 2 and "no shipped config of that name" in bad.output
    assert not (tmp_path / "s").exists()
