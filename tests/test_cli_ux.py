"""Command-line experience: defaults visible in every --help, --version, ``python -m nclab``,
plain progress lines in a log, search progress naming its metric, errors naming flags,
narrow-terminal tables, shipped configs (``nclab config``), ``nclab plot``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from nclab import __version__
from nclab.cli import _register_all, app
from nclab.cli._common import error_text
from nclab.config import ConfigError, OptionError

_register_all()
runner = CliRunner()


def _commands(cmd, prefix=()):
    """(path, click command) of every leaf command, hidden ones excluded."""
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            if not getattr(sub, "hidden", False):
                yield from _commands(sub, prefix + (name,))
    else:
        yield prefix, cmd


ALL = list(_commands(typer.main.get_command(app)))


def _flat(text: str) -> str:
    """Help text without box drawing and line wrapping."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_every_command_is_checked():
    names = {" ".join(p) for p, _ in ALL}
    for expected in ("train", "sweep", "search", "reproduce", "report", "metrics", "theory ufm", "theory md",
                     "analyze", "detect", "demo", "plot", "config list", "config show"):
        assert expected in names


# options that are one of several alternatives (no default to state)
_CHOICE_OPTIONS = {("analyze", "--model"), ("analyze", "--model-class"), ("analyze", "--dataset"),
                   ("theory ufm", "--alpha")}  # --alpha: the loss's own default (theory.py's help)


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[" ".join(p) for p, _ in ALL])
def test_help_shows_every_default(path):
    cmd = dict(ALL)[path]
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    shown = _flat(res.output)
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        text = getattr(p, "help", None) or ""
        # a default written in the help ("[default: runs/<name>]") survives Rich markup
        for bracket in re.findall(r"\\?\[[^\]]*\]", text):
            assert _flat(bracket.replace("\\[", "[")) in shown, (path, p.name, bracket)
        # an option without a value default says what happens when it is not given
        if p.param_type_name == "option" and not p.required and not getattr(p, "is_flag", False) \
                and p.default in (None, []) and not p.multiple:
            if (" ".join(path), p.opts[0]) not in _CHOICE_OPTIONS:
                assert re.search(r"default|preset|\[small", text, re.I), (path, p.opts, text)
        elif p.param_type_name == "option" and not getattr(p, "is_flag", False) and p.default not in (None, [], ()):
            assert "[default: " in shown, (path, p.opts)


def test_version_flag_and_python_m():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"nclab {__version__}"
    out = subprocess.run([sys.executable, "-m", "nclab", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"nclab {__version__}"
    import importlib.metadata

    assert importlib.metadata.version("nclab") == __version__  # one version source


# environment variables with which Rich treats any stream as a terminal
_FORCE_TTY = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def test_plain_progress_is_rate_limited(capsys, monkeypatch):
    from nclab.train.progress import Progress

    monkeypatch.setenv("NCLAB_PROGRESS_SECONDS", "3600")
    for k in _FORCE_TTY:
        monkeypatch.delenv(k, raising=False)
    bar = Progress(True, [("x", 10, 0)])
    assert bar.plain  # pytest's captured stderr is not a terminal
    for e in range(1, 6):
        bar.update(0, e, None, 0.5)
    bar.close()
    err = capsys.readouterr().err.splitlines()
    # the first epoch, then (interval not reached) only where the run stopped
    assert [ln.split()[2] for ln in err] == ["1/10", "5/10"]
    silent = Progress(False, [("x", 10, 0)])
    silent.update(0, 1, None, 0.5)
    silent.close()
    assert capsys.readouterr().err == ""


def test_search_prints_trials_and_names_the_metric(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("epochs: 10\nloss: {name: ls, alpha: 0.1}\noptim: {lr: 0.1}\nschedule: {gamma: 0.1}\n")
    res = runner.invoke(app, ["search", str(base), "--store", str(tmp_path / "st"), "--trials", "2",
                              "--executor", "inline", "--run-fn", "nclab.sweep.testing:fake_run", "--no-retrain"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "score val_acc_noisy (maximize)" in out
    assert re.search(r"trial 0 \(1/2 finished\): val_acc_noisy [0-9.]+ +best", out)
    assert re.search(r"trial 1 \(2/2 finished\): val_acc_noisy", out)
    assert re.search(r"best val_acc_noisy \(maximize\) [0-9.]+ with optim.lr=", out)


def test_errors_name_flags(tmp_path):
    # errors carry the options they are about; the CLI names them by their flags
    exc = ConfigError("{run_dir} holds a run; pass {resume} to continue it or {overwrite}",
                      options=("resume", "overwrite"), run_dir="r{resume}")
    assert str(exc) == "r{resume} holds a run; pass resume to continue it or overwrite"
    flags = {"resume": "--resume", "overwrite": "--overwrite"}
    assert error_text(exc, flags) == "r{resume} holds a run; pass --resume to continue it or --overwrite"
    assert error_text(ValueError("use overwrite"), flags) == "use overwrite"  # plain text is never rewritten
    assert OptionError("{workers} must be >= 1", options=("workers",)).field == "workers"
    d = tmp_path / "done"
    assert runner.invoke(app, ["train", "digits-binary", "--set", "epochs=1", "--set", "dataset.per_class=10",
                               "--run-dir", str(d), "--no-progress"]).exit_code == 0
    res = runner.invoke(app, ["train", "digits-binary", "--set", "epochs=1", "--set", "dataset.per_class=10",
                              "--run-dir", str(d), "--no-progress"])
    assert res.exit_code == 2 and "pass --resume to continue it or --overwrite" in _flat(res.output)
    res = runner.invoke(app, ["train", "digits-binary", "--max-epochs", "0", "--run-dir", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--max-epochs" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", "digits-binary", "--resume", "--overwrite", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--resume" in res.output and "--overwrite" in res.output
    res = runner.invoke(app, ["train", "no-such-config"])
    assert res.exit_code == 2 and "no shipped config of that name" in _flat(res.output)


def _fake_history(n=6):
    recs = []
    for e in range(1, n + 1):
        recs.append({"epoch": e, "train_loss": 1 / e, "train_loss_running": 1.1 / e, "test_loss": 1.2 / e,
                     "train_acc_noisy": 0.5 + e / 20, "train_acc_clean": 0.5 + e / 25, "test_acc": 0.5 + e / 30,
                     "train.nc1": 2.0 ** -e, "test.nc1": 2.0 ** (1 - e), "train.memorization": 0.1 * e,
                     "train.dilation": 0.05 * e, "test.dilation": None})
    return recs


def test_plot_writes_curves_for_any_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _fake_history()))
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (run / "figures").iterdir())
    assert names == ["accuracy.png", "losses.png", "memorization_dilation.png", "nc1.png"]
    for n in names:
        assert (run / "figures" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "metrics.jsonl" in res.output
    # several runs overlaid: colour = run, both named in the legend
    other = tmp_path / "ls"
    other.mkdir()
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _fake_history(4)))
    res = runner.invoke(app, ["plot", str(run), str(other)])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["plot", str(run), str(other), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cmp").glob("*.png"))) == 4


def test_overlay_legend_names_every_run_and_series(monkeypatch, tmp_path):
    import nclab.report.style as style
    from nclab.report.curves import plot_history

    figs = []
    monkeypatch.setattr(style, "save", lambda fig, path: figs.append(fig))
    plot_history({"ce": _fake_history(3), "ls": _fake_history(3)}, tmp_path)
    acc = next(f for f in figs if f.axes[0].get_title() == "Accuracy")
    labels = [t.get_text() for t in acc.axes[0].get_legend().get_texts()]
    assert {"ce: test", "ls: test", "ce: train, clean labels"} <= set(labels)
    import matplotlib.pyplot as plt

    for f in figs:
        plt.close(f)


def test_config_list_and_show_round_trip(tmp_path):
    from nclab.configs import list_configs, resolve_config
    from nclab.train import TrainConfig

    names = [c.name for c in list_configs()]
    assert {"digits-binary", "paper-mlp", "sweeps/digits-md"} <= set(names)
    res = runner.invoke(app, ["config", "show", "digits-binary"])
    assert res.exit_code == 0
    (tmp_path / "mine.yaml").write_text(res.output)
    cfg = TrainConfig.from_sources(tmp_path / "mine.yaml", ["epochs=1"])  # a valid config to start from
    assert cfg.name == "digits-binary" and cfg.epochs == 1
    assert yaml.safe_load(res.output) == yaml.safe_load(resolve_config("digits-binary").read_text())
    res = runner.invoke(app, ["config", "show", "nope"])
    assert res.exit_code == 2 and "digits-binary" in res.output
    # a path that exists wins over a shipped name
    local = tmp_path / "digits-binary"
    local.write_text("name: local\n")
    assert resolve_config(local) == local
    # the top-level configs/ of a checkout still points at the shipped files
    top = Path(__file__).resolve().parents[1] / "configs" / "digits-binary.yaml"
    if top.exists():
        assert top.read_text() == resolve_config("digits-binary").read_text()


def test_tables_wrap_at_80_columns(tmp_path, monkeypatch):
    """Rich tables at 80 columns wrap their cells; nothing is cut off with an ellipsis."""
    from nclab.cli import _common

    monkeypatch.setattr(_common.console, "_width", 80)  # the shared console reads COLUMNS at import
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "f.npz", features=rng.normal(size=(60, 4)) + y[:, None], labels=y, clean_labels=y)
    for args in (["metrics", str(tmp_path / "f.npz")], ["config", "list"],
                 ["theory", "ufm", "--classes", "3", "--per-class", "2", "--lambda-w", "0.01", "--lambda-h", "0.01",
                  "--starts", "1"]):
        res = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        assert "…" not in res.output, (args, res.output)
        assert max(len(ln) for ln in res.output.splitlines()) <= 80, (args, res.output)


def test_sweep_errors_name_flags(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "src" / "nclab" / "configs" / "sweeps" / "digits-md.yaml"
    res = runner.invoke(app, ["sweep", str(spec), "--workers", "0", "--store", str(tmp_path / "st")])
    assert res.exit_code == 2 and "--workers must be >= 1" in res.output
    res = runner.invoke(app, ["sweep", str(spec), "--stack", "0", "--store", str(tmp_path / "st0"), "--no-progress"])
    assert res.exit_code == 2 and "--stack must be >= 1; got 0" in res.output and "Traceback" not in res.output


def test_train_errors_stay_on_one_line_whatever_the_path_length(tmp_path):
    """A long path in an error is never wrapped at the terminal width (users and scripts grep it)."""
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    deep.mkdir(parents=True)
    cfg = deep / "config.yaml"
    cfg.write_text("epochs: 1\nbogus_key: 3\n")
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(deep / "run")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and len(lines[0]) > 120 and "bogus_key" in lines[0], res.output
