"""Sweep specs, hashing, the driver (failures, retry), a real SIGKILL + resume, two concurrent
sweeps on one store, and the Ray executor on a local runtime."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from nclab.config import ConfigError
from nclab.store.index import RunStore
from nclab.sweep import InlineExecutor, LocalExecutor, SweepSpec, config_hash, expand, run_sweep
from nclab.sweep.spec import canonical_json
from nclab.sweep.testing import fake_run, fake_stack_run

CLI = "import typer; from nclab.cli.sweep import register; app = typer.Typer(); register(app); app()"


def _spec(**kw):
    d = {"name": "t", "base": {"optim": {"lr": 0.1}, "noise": {"rate": 0.0}}}
    d.update(kw)
    return SweepSpec.model_validate(d)


# ----------------------------------------------------------------------------- expansion, hashing
def test_grid_random_seeds_expand_to_the_product():
    spec = _spec(
        grid={"noise.rate": [0.0, 0.2, 0.4], "loss.name": ["ce", "ls"]},
        random={"trials": 2, "seed": 7, "params": {"optim.lr": {"dist": "loguniform", "low": 1e-5, "high": 0.5}}},
        seeds=[0, 1],
    )
    runs = expand(spec, resolve=None)
    assert len(runs) == 3 * 2 * 2 * 2
    assert len({r.hash for r in runs}) == len(runs)
    lrs = sorted({r.config["optim"]["lr"] for r in runs})
    assert len(lrs) == 2 and all(1e-5 <= v <= 0.5 for v in lrs)
    # trial t draws the same values at every grid point, and more trials keep the earlier ones
    more = expand(spec.model_copy(update={"random": spec.random.model_copy(update={"trials": 3})}), resolve=None)
    assert set(lrs) < {r.config["optim"]["lr"] for r in more}
    assert {r.varied["seed"] for r in runs} == {0, 1}
    assert runs[0].config["noise"]["rate"] == 0.0 and runs[0].config["loss"]["name"] == "ce"


def test_random_draw_kinds_stay_in_range():
    spec = _spec(random={"trials": 50, "params": {
        "a": {"dist": "uniform", "low": 0.01, "high": 0.25},
        "b": {"dist": "choice", "values": [0.01, 0.1, 0.5]},
        "c": {"dist": "int", "low": 1, "high": 3},
    }})
    runs = expand(spec, resolve=None)
    a = [r.config["a"] for r in runs]
    assert all(0.01 <= v <= 0.25 for v in a) and max(a) - min(a) > 0.1
    assert {r.config["b"] for r in runs} == {0.01, 0.1, 0.5}
    assert {r.config["c"] for r in runs} == {1, 2, 3}


def test_hash_is_canonical_and_ignores_the_name():
    a = {"seed": 1, "optim": {"lr": 0.1, "momentum": 0.9}, "noise": {"rate": 0.0}}
    b = {"noise": {"rate": 0}, "optim": {"momentum": 0.9, "lr": 0.1}, "seed": 1, "name": "other"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 2})
    assert config_hash({**a, "optim": {"lr": 0.1000001, "momentum": 0.9}}) != config_hash(a)
    assert canonical_json({"b": [1.0, 2.5], "a": None}) == '{"a":null,"b":[1,2.5]}'
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    with pytest.raises(ConfigError, match="non-finite"):
        config_hash({"x": float("nan")})


def test_duplicate_configs_are_merged():
    spec = _spec(grid={"noise.rate": [0.1, 0.10, 0.2]})
    assert len(expand(spec, resolve=None)) == 2


def test_bad_specs_are_clear_errors():
    with pytest.raises(ValueError, match="no values"):
        _spec(grid={"noise.rate": []})
    with pytest.raises(ValueError, match="both gridded and drawn"):
        _spec(grid={"optim.lr": [0.1]}, random={"params": {"optim.lr": {"dist": "uniform", "low": 0, "high": 1}}})
    with pytest.raises(ValueError, match="low > 0"):
        _spec(random={"params": {"optim.lr": {"dist": "loguniform", "low": 0, "high": 1}}})
    with pytest.raises(ValueError, match="did you mean 'grid'"):
        SweepSpec.model_validate({"name": "x", "gird": {}})
    with pytest.raises(ConfigError, match="invalid run config"):
        expand(_spec(grid={"noise.rate": [0.1, -1.0]}), resolve=lambda c: _reject_negative(c))


def test_load_spec_reports_the_file(tmp_path):
    from nclab.sweep import load_spec

    (tmp_path / "base.yaml").write_text("optim: {lr: 0.5}\nseed: 3\n")
    (tmp_path / "s.yaml").write_text("name: s\nbase_file: base.yaml\nbase: {seed: 4}\ngrid: {optim.lr: [0.1, 0.2]}\n")
    spec, base = load_spec(tmp_path / "s.yaml")
    assert base == {"optim": {"lr": 0.5}, "seed": 4}
    assert [r.config["optim"]["lr"] for r in expand(spec, base=base, resolve=None)] == [0.1, 0.2]
    (tmp_path / "bad.yaml").write_text("name: s\nseeds: [1, 1]\n")
    with pytest.raises(ConfigError, match="(?s)bad.yaml.*duplicate seeds"):
        load_spec(tmp_path / "bad.yaml")


def _reject_negative(cfg):
    if cfg["noise"]["rate"] < 0:
        raise ValueError("noise.rate must be >= 0")
    return cfg


def test_trainconfig_resolution_fills_defaults():
    train = pytest.importorskip("nclab.train")
    if not hasattr(train, "TrainConfig"):
        pytest.skip("trainer config not available")
    runs = expand(_spec(grid={"noise.rate": [0.0]}, base={"noise": {"kind": "none"}}))
    cfg = runs[0].config
    assert "optim" in cfg and "momentum" in cfg["optim"] and "dataset" in cfg  # defaults written out
    assert runs[0].hash == config_hash(train.TrainConfig.model_validate(cfg).model_dump(mode="json"))


# ----------------------------------------------------------------------------- driver
def test_failed_run_is_recorded_and_retried(tmp_path):
    spec = _spec(grid={"seed": [0, 1, 2]})
    runs = expand(spec, resolve=None)
    runs[1].config["fake"] = {"fail": True}
    st = RunStore(tmp_path)
    s = run_sweep(st, runs, run_fn=fake_run, executor=InlineExecutor(), sweep="t")
    assert (s.completed, s.failed) == (2, 1)
    bad = st.get(runs[1].hash)
    assert bad["status"] == "failed" and "RuntimeError: fake failure requested" in bad["error"]
    assert "Traceback" in bad["error"]
    # rerun without retry: nothing runs; with retry: the failed run runs again (and fails again)
    s2 = run_sweep(st, runs, run_fn=fake_run, executor=InlineExecutor())
    assert (s2.completed, s2.failed, s2.already_done, s2.skipped_failed) == (0, 0, 2, 1)
    runs[1].config["fake"] = {}  # a fixed run function would now succeed
    s3 = run_sweep(st, runs, run_fn=fake_run, executor=InlineExecutor(), retry_failed=True)
    assert (s3.completed, s3.failed) == (1, 0)
    assert st.get(runs[1].hash)["attempts"] == 2 and st.counts()["completed"] == 3


def test_local_executor_runs_and_survives_a_crashed_worker(tmp_path):
    runs = expand(_spec(grid={"seed": list(range(6))}), resolve=None)
    runs[2].config["fake"] = {"crash": True}  # os._exit in the worker: the pool breaks
    st = RunStore(tmp_path)
    with LocalExecutor(2) as ex:
        s = run_sweep(st, runs, run_fn=fake_run, executor=ex)
    assert st.get(runs[2].hash)["status"] == "failed"
    assert "worker process died" in st.get(runs[2].hash)["error"]
    assert s.completed + s.failed == 6 and s.completed >= 4  # the pool was rebuilt and went on
    pids = {r["final"]["pid"] for r in st.rows(status="completed")}
    assert os.getpid() not in pids  # really ran in worker processes


def test_worker_preload_names_the_run_functions_modules():
    import functools

    from nclab.sweep.executors import worker_preload
    from nclab.sweep.testing import preload_probe
    from nclab.sweep.trainer import train_run, train_stack_run

    assert worker_preload(fake_run) == ["nclab.sweep.testing"]
    assert worker_preload(preload_probe) == ["colorsys", "nclab.sweep.testing"]
    for fn in (train_run, train_stack_run, functools.partial(functools.partial(train_run, log=("tensorboard",))),
               functools.partial(train_stack_run, experiment="x")):
        assert worker_preload(fn) == ["nclab.sweep.worker_preload", "nclab.sweep.trainer"]


PROBE = textwrap.dedent("""
    import json, os, sys
    from nclab.store.index import RunStore
    from nclab.sweep import LocalExecutor, run_sweep
    from nclab.sweep.testing import preload_probe
    if __name__ == "__main__":
        runs = [{"hash": f"{i:016x}", "name": f"p{i}", "config": {"seed": i}} for i in range(2)]
        st = RunStore(sys.argv[1])
        with LocalExecutor(2, context=sys.argv[2]) as ex:
            s = run_sweep(st, runs, run_fn=preload_probe, executor=ex)
        print(json.dumps({"driver": os.getpid(), "completed": s.completed,
                          "finals": [r["final"] for r in st.rows(status="completed")]}))
""")


@pytest.mark.parametrize("context", ["forkserver", "spawn"])
def test_local_workers_are_forked_from_a_preloaded_server_or_spawned(tmp_path, context):
    """A fresh driver (the forkserver is one per process): with ``forkserver`` every worker
    already holds the modules its run function asked for, and is the server's child."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / context), context],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["completed"] == 2
    finals = got["finals"]
    assert all(f["pid"] != got["driver"] for f in finals)
    if context == "forkserver":
        assert all(f["preloaded"] for f in finals)
        assert {f["ppid"] for f in finals} != {got["driver"]}  # children of the server
    else:
        assert not any(f["preloaded"] for f in finals)
        assert {f["ppid"] for f in finals} == {got["driver"]}


class _PoolBrokenAtSubmit(InlineExecutor):
    """A pool that a dying worker broke between the runner's wait and its next submit: the
    submit itself raises, once (``concurrent.futures`` does this for a broken pool)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls, self.restarts = at, 0, 0

    def submit(self, run_fn, config, run_dir):
        self.calls += 1
        if self.calls == self.at:
            import concurrent.futures as cf

            raise cf.process.BrokenProcessPool("A child process terminated abruptly")
        return super().submit(run_fn, config, run_dir)

    def restart(self):
        self.restarts += 1


def test_a_pool_broken_at_submit_loses_no_run(tmp_path):
    runs = expand(_spec(grid={"seed": list(range(4))}), resolve=None)
    st = RunStore(tmp_path)
    ex = _PoolBrokenAtSubmit(at=2)
    s = run_sweep(st, runs, run_fn=fake_run, executor=ex)
    assert s.completed == 4 and s.failed == 0  # the run refused at submit went back and ran after a restart
    assert ex.restarts == 1 and ex.calls == 5
    assert {r["status"] for r in st.rows()} == {"completed"}


# ----------------------------------------------------------------------------- kill, concurrency
def _write_spec(path: Path, n: int, sleep: float) -> Path:
    spec = {"name": "k", "base": {"fake": {"sleep": sleep, "epochs": 3}}, "grid": {"seed": list(range(n))}}
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep_proc(spec: Path, store: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "sweep", str(spec), "--store", str(store), "--workers", str(workers),
         "--no-progress", "--run-fn", "nclab.sweep.testing:fake_run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _db_rows(store: Path):
    con = sqlite3.connect(store / "index.sqlite", timeout=30)
    try:
        return con.execute("SELECT hash, status, attempts, started, final FROM runs").fetchall()
    finally:
        con.close()


def test_resume_after_sigkill(tmp_path):
    n = 12
    spec = _write_spec(tmp_path / "spec.yaml", n, sleep=0.4)
    store = tmp_path / "store"
    p = _sweep_proc(spec, store)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (store / "index.sqlite").exists():
            try:
                if sum(1 for r in _db_rows(store) if r[1] == "completed") >= 3:
                    break
            except sqlite3.OperationalError:
                pass  # table not created yet
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = {r[0]: r for r in _db_rows(store)}
    done_before = {h: r for h, r in before.items() if r[1] == "completed"}
    running = [h for h, r in before.items() if r[1] == "running"]
    assert 3 <= len(done_before) < n and running, "the kill must land mid-sweep"
    # the orphaned workers stop on their own (they watch the driver), so nothing keeps writing
    time.sleep(1.5)
    sizes = {h: (store / "runs" / h / "metrics.jsonl").stat().st_size for h in running if (store / "runs" / h / "metrics.jsonl").exists()}
    time.sleep(1.0)
    for h, sz in sizes.items():
        assert (store / "runs" / h / "metrics.jsonl").stat().st_size == sz
    # a half-written run directory is not a result
    assert all(before[h][4] is None for h in running)

    p2 = _sweep_proc(spec, store)
    out, err = p2.communicate(timeout=90)
    assert p2.returncode == 0, err
    after = {r[0]: r for r in _db_rows(store)}
    assert len(after) == n  # no duplicate rows
    assert all(r[1] == "completed" for r in after.values())
    for h, r in done_before.items():  # completed runs were not re-run
        assert after[h][2] == 1 and after[h][3] == r[3] and after[h][4] == r[4]
    for h in running:  # killed runs were re-claimed and finished
        assert after[h][2] == 2
        recs = [json.loads(x) for x in (store / "runs" / h / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in recs] == [1, 2, 3]  # a clean rerun, not appended to the torn one
    assert f"{len(running)} reclaimed" in out


def test_two_concurrent_sweeps_run_each_run_once(tmp_path):
    n = 16
    spec = _write_spec(tmp_path / "spec.yaml", n, sleep=0.15)
    store = tmp_path / "store"
    ps = [_sweep_proc(spec, store, workers=1) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in ps]
    for p, (out, err) in zip(ps, outs):
        assert p.returncode == 0, err
    rows = _db_rows(store)
    assert len(rows) == n
    assert all(r[1] == "completed" and r[2] == 1 for r in rows)  # each run claimed exactly once
    done_now = [int(out.split(" completed now")[0].split(": ")[-1]) for out, _ in outs]
    assert sum(done_now) == n


# ----------------------------------------------------------------------------- ray
def test_ray_executor_local_runtime_runs_and_stacks(tmp_path):
    """One local Ray runtime (its start-up is most of the cost): single runs, then stacks."""
    pytest.importorskip("ray")
    from nclab.sweep import RayExecutor

    runs = expand(_spec(grid={"seed": [0, 1, 2, 3]}), resolve=None)
    runs[3].config["fake"] = {"fail": True}
    st = RunStore(tmp_path / "single")
    stacked_runs = expand(_spec(name="r", grid={"seed": [10, 11, 12, 13]}), resolve=None)
    st2 = RunStore(tmp_path / "stacked")
    with RayExecutor(num_cpus=1, local_cpus=2) as ex:
        assert ex.capacity == 2
        s = run_sweep(st, runs, run_fn=fake_run, executor=ex)
        s2 = run_sweep(st2, stacked_runs, run_fn=fake_run, stack_fn=fake_stack_run, executor=ex, stack=2)
    assert (s.completed, s.failed) == (3, 1)
    assert "fake failure requested" in st.get(runs[3].hash)["error"]
    assert all((tmp_path / "single" / "runs" / r.hash / "final.json").exists() for r in runs[:3])
    assert {r["final"]["pid"] for r in st.rows(status="completed")} - {os.getpid()}
    assert s2.completed == 4
    assert {r["final"]["stack_size"] for r in st2.rows(status="completed")} == {2}
