"""`nclab report` on an ordinary sweep store (not the study): groups by the swept keys, a table
with numbers for every group, curves per group, the M-D scatter only when the runs have it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from nclab.report.sweep_report import build_sweep_report, is_sweep_store, swept_keys
from nclab.store.index import Owner, RunStore

PNG = b"\x89PNG\r\n\x1a\n"


def _store(root, *, with_md: bool = True, with_history: bool = True) -> RunStore:
    """CE/LS x noise 0.1/0.3 x 2 seeds, no stop rule, as `nclab sweep` stores them."""
    st = RunStore(root)
    o = Owner()
    rng = np.random.default_rng(0)
    for loss in ("ce", "ls"):
        for rate in (0.1, 0.3):
            for seed in (0, 1):
                h = f"{loss}-{rate}-{seed}"
                cfg = {"name": f"s-{h}", "seed": seed, "epochs": 3, "dataset": {"name": "digits", "classes": 2},
                       "loss": {"name": loss, "alpha": 0.1}, "noise": {"kind": "symmetric", "rate": rate},
                       "stop": {"train_acc": None, "patience": 1}}
                final = {"epoch": 3, "test_acc": 0.9 - rate + 0.01 * rng.standard_normal(), "train_acc_noisy": 0.95}
                if with_md:
                    final |= {"train.memorization": rate * 2 + 0.1 * seed, "train.dilation": rate + 0.05 * seed}
                st.register([{"hash": h, "name": h, "config": cfg}], sweep="tiny")
                st.claim(h, o)
                st.complete(h, o, final)
                if with_history:
                    d = st.run_dir(h)
                    d.mkdir(parents=True, exist_ok=True)
                    (d / "metrics.jsonl").write_text("".join(
                        json.dumps({"epoch": e, "test_acc": 0.5 + 0.1 * e, "train.nc1": 1.0 / e}) + "\n"
                        for e in (1, 2, 3)))
    return st


def test_sweep_report_groups_by_swept_keys_with_numbers_for_every_group(tmp_path):
    _store(tmp_path / "s")
    assert is_sweep_store(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "No artists with labels", no empty-figure warnings
        rep = build_sweep_report(tmp_path / "s")
    s = rep.summary
    assert s["swept_keys"] == ["loss.name", "noise.rate"] and len(s["groups"]) == 4
    for g in s["groups"]:
        assert g["runs"] == 2 and g["seeds"] == [0, 1]
        acc = g["metrics"]["test_acc"]
        assert acc["n"] == 2 and acc["ci"][0] <= acc["mean"] <= acc["ci"][1]
    md = rep.markdown.read_text()
    acc_row = next(line for line in md.splitlines() if line.startswith("| test accuracy"))
    assert acc_row.count("[") == 4 and "—" not in acc_row  # a number and an interval in every group
    assert "loss=ce, rate=0.1" in md and "n/a" not in md and "## Claims" not in md
    assert sorted(p.name for p in rep.figures) == ["curves.png", "md_scatter.png"]
    for p in rep.figures:
        assert p.read_bytes()[:8] == PNG
    assert rep.html.read_text().count("data:image/png;base64") == 2  # one self-contained page


def test_sweep_report_draws_only_figures_with_data(tmp_path):
    _store(tmp_path / "s", with_md=False, with_history=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = build_sweep_report(tmp_path / "s", out_dir=tmp_path / "out")
    assert rep.figures == [] and not list((tmp_path / "out" / "figures").iterdir())
    md = rep.markdown.read_text()
    assert "memorization" not in md and "Curves" not in md and "![" not in md


def test_swept_keys_ignore_seed_and_name():
    cfgs = [{"seed": s, "name": f"r{s}", "optim": {"lr": lr}, "noise": {"rate": 0.2}} for s in (0, 1) for lr in (0.1, 0.01)]
    assert swept_keys(cfgs) == ["optim.lr"]
    assert swept_keys(cfgs[:1]) == []


def test_report_command_dispatches_sweep_stores(tmp_path):
    from nclab.cli.sweep import register

    _store(tmp_path / "s", with_history=False)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["kind"] == "sweep" and out["runs"] == 8
    with pytest.raises(ValueError, match="no completed runs"):
        build_sweep_report(RunStore(tmp_path / "empty").root)
