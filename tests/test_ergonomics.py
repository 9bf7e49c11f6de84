"""Small API frictions: train() takes a dict, NeuralCollapse.plot, install hints, help rendering."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from typer.testing import CliRunner

from nclab.cli import _register_all, app


def test_train_accepts_a_dict(tmp_path):
    from nclab.train import train

    cfg = {"dataset": {"name": "digits", "classes": 2}, "epochs": 1, "model": {"name": "mlp", "depth": 1, "width": 8},
           "save_features": False, "eval_mode": "light"}
    res = train(cfg, run_dir=tmp_path / "r", progress=False)
    assert res.status == "completed" and res.config.epochs == 1
    from nclab.config import ConfigError

    with pytest.raises(ConfigError, match="epochs"):
        train({"epochs": 0}, run_dir=tmp_path / "bad", progress=False)


def test_neural_collapse_plot_uses_torchmetrics_helpers():
    from nclab.integrations.torchmetrics import NeuralCollapse

    m = NeuralCollapse(3, feature_dim=4)
    g = torch.Generator().manual_seed(0)
    history = []
    for shift in range(3):
        m.update(torch.randn(30, 4, generator=g) + shift, torch.arange(30) % 3)
        history.append(m.compute())
    fig, ax = m.plot()
    assert fig is not None and len(ax.patches) + len(ax.get_lines()) + len(ax.collections) > 0
    fig, ax = m.plot(history)
    assert len(ax.get_lines()) >= len(history[0])  # one curve per metric over the three epochs


@pytest.mark.parametrize("module,extra,missing", [
    ("nclab.integrations.torchmetrics", "torchmetrics", "torchmetrics"),
    ("nclab.integrations.lightning", "lightning", "lightning"),
])
def test_every_optional_extra_names_its_install(monkeypatch, module, extra, missing):
    for name in [missing] + [n for n in sys.modules if n.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # an import of it (or of a submodule loaded earlier) now fails
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'nclab\[{extra}\]'"):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_help_shows_flags_as_flags_and_plain_usage():
    _register_all()
    runner = CliRunner()
    for cmd in (["train"], ["sweep"], ["search"], ["report"], ["reproduce"], ["demo"], ["detect"]):
        out = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
        assert out.exit_code == 0, out.output
        assert "<bool>" not in out.output, cmd
        usage = next(line for line in out.output.splitlines() if "Usage:" in line)
        assert "{" not in usage, usage
    out = runner.invoke(app, ["sweep", "--help"], terminal_width=200)
    assert "SPEC_PATH" in out.output and "--dry-run " in out.output
