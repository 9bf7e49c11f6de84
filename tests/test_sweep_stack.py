"""Sweeps that hand out stacks, and thread discipline across workers."""

from __future__ import annotations

import os

import pytest
import yaml

from nclab.store.index import RunStore
from nclab.sweep import InlineExecutor, LocalExecutor, SweepSpec, expand, run_sweep
from nclab.sweep.trainer import train_run
from nclab.sweep.testing import fake_run, fake_stack_run

BASE = {
    "epochs": 3, "batch_size": 32, "eval_every": 3, "checkpoint_every": 3, "threads": 1,
    "dataset": {"name": "digits", "classes": 2},
    "noise": {"kind": "symmetric_all", "rate": 0.2},
    "model": {"name": "mlp", "depth": 2, "width": 16},
    "optim": {"lr": 0.05},
}
TIMING = {"elapsed_s", "epoch_time_s", "eval_time_s"}


def _runs(n_seeds: int = 3):
    spec = SweepSpec.model_validate({"name": "st", "base": BASE, "grid": {"loss.name": ["ce", "ls"]},
                                     "seeds": list(range(n_seeds))})
    return expand(spec)


def _finals(store: RunStore) -> dict[str, dict]:
    return {r["hash"]: {k: v for k, v in r["final"].items() if k not in TIMING} for r in store.rows(status="completed")}


def test_stacked_sweep_completes_every_member_like_solo_runs(tmp_path):
    runs = _runs(3)  # 6 runs, one stack key
    st = RunStore(tmp_path / "stacked")
    s = run_sweep(st, runs, run_fn=train_run, executor=InlineExecutor(), stack=4)
    assert (s.completed, s.failed) == (6, 0)
    for r in runs:
        rd = st.run_dir(r.hash)
        for name in ("config.yaml", "env.json", "metrics.jsonl", "noise.npz", "features.npz", "status.json",
                     "checkpoints/last.pt"):
            assert (rd / name).exists(), name
    sizes = sorted(__import__("json").loads((st.run_dir(r.hash) / "env.json").read_text())["stack"]["size"]
                   for r in runs)
    assert sizes == [2, 2, 4, 4, 4, 4]  # one stack of 4, one of 2
    assert all(f["stop_reason"] == "epochs" for f in _finals(st).values())
    # the same numbers as solo runs: test_cli_stack_4_and_plain_sweep_export_identical_final_columns


def test_stack_needs_the_builtin_trainer(tmp_path):
    with pytest.raises(ValueError, match="built-in trainer"):
        run_sweep(RunStore(tmp_path), _runs(1), run_fn=fake_run, executor=InlineExecutor(), stack=2)


def test_failing_member_fails_alone_and_stacks_reach_process_workers(tmp_path):
    spec = SweepSpec.model_validate({"name": "f", "base": {"optim": {"lr": 0.1}}, "grid": {"seed": [0, 1, 2, 3, 4]}})
    runs = expand(spec, resolve=None)
    runs[1].config["fake"] = {"fail": True}
    st = RunStore(tmp_path)
    with LocalExecutor(2) as ex:
        s = run_sweep(st, runs, run_fn=fake_run, stack_fn=fake_stack_run, executor=ex, stack=2)
    assert (s.completed, s.diverged) == (4, 1)  # the failing member is recorded as diverged, never completed
    rows = {r.hash: st.get(r.hash) for r in runs}
    assert rows[runs[1].hash]["outcome"] == "diverged"
    assert all(rows[r.hash]["outcome"] == "completed" for i, r in enumerate(runs) if i != 1)
    assert {rows[r.hash]["final"].get("stack_size", 1) for i, r in enumerate(runs) if i != 1} == {2, 1}  # a lone run goes solo
    assert {rows[r.hash]["final"]["pid"] for i, r in enumerate(runs) if i != 1} - {os.getpid()}  # ran in worker processes


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(tmp_path):
    """One run at a time in this process, then two worker processes side by side."""
    runs = _runs(1)
    finals = []
    for j, ex in ((1, InlineExecutor()), (2, LocalExecutor(2))):
        st = RunStore(tmp_path / f"j{j}")
        with ex:
            s = run_sweep(st, runs, run_fn=train_run, executor=ex)
        assert s.completed == len(runs)
        finals.append(_finals(st))
    assert finals[0] == finals[1]  # bit-identical: each run has threads=1 whatever -j is


def test_cli_sweep_with_stack(tmp_path):
    spec = {"name": "cli", "base": {**BASE, "epochs": 2, "eval_every": 2}, "seeds": [0, 1, 2]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    from typer.testing import CliRunner

    from nclab.cli import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["sweep", str(path), "--store", str(tmp_path / "store"), "--executor", "inline",
                                   "--stack", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "3 completed now" in res.output
    st = RunStore(tmp_path / "store")
    assert len(st.rows(status="completed")) == 3


def test_cli_stack_4_and_plain_sweep_export_identical_final_columns(tmp_path):
    """float32, 8 seeds: ``nclab sweep --stack 4`` and ``nclab sweep`` give the same final.* columns."""
    import csv

    from typer.testing import CliRunner

    from nclab.cli import _register_all, app

    _register_all()
    base = {**BASE, "epochs": 2, "eval_every": 2, "dataset": {"name": "digits", "classes": 2, "per_class": 48}}
    spec = {"name": "same", "base": base, "seeds": list(range(8))}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    tables = []
    for stack in ("4", "1"):
        store = tmp_path / f"store{stack}"
        res = CliRunner().invoke(app, ["sweep", str(path), "--store", str(store), "--executor", "inline",
                                       "--stack", stack, "--no-progress"])
        assert res.exit_code == 0, res.output
        out = tmp_path / f"s{stack}.csv"
        assert CliRunner().invoke(app, ["store-export", str(store), "--out", str(out)]).exit_code == 0
        with out.open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 8
        tables.append({r["hash"]: {k: v for k, v in r.items() if k.startswith("final.")
                                   and k.split(".", 1)[1] not in TIMING} for r in rows})
    stacked, plain = tables
    assert len(next(iter(plain.values()))) > 10 and "final.test_acc" in next(iter(plain.values()))
    assert stacked == plain
