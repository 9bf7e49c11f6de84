"""Hostile or broken input (issue 20: bounded input, right outcome names, one-line errors):
each case is refused quickly, with one line and the documented exit code (2 = bad input)."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.config import ConfigError, load_yaml, parse_overrides
from nclab.data import DataFormatError, load_dataset
from nclab.data.split import train_val_split
from nclab.seeding import numpy_generator

_register_all()
runner = CliRunner()

BOMB_LEVELS = "abcdefghij"


def _bomb(levels: int = 10) -> str:
    """The classic "billion laughs": each level a list of nine aliases of the one before."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip(BOMB_LEVELS, BOMB_LEVELS[1:levels]):
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def one_line_error(res, code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, the error text on one logical line naming every needle."""
    out = res.output
    assert res.exit_code == code, (res.exit_code, out, res.exception)
    assert "Traceback" not in out and "pydantic" not in out, out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, (n, out)
    return flat


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------ YAML

def test_alias_bomb_is_refused_fast(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(10))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: refused, its aliases expand to [\d,]+ values") as exc:
        load_yaml(p)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(exc.value)


def test_alias_bomb_in_dataset_options_from_the_cli(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text("dataset:\n  options:\n" + "".join("    " + line + "\n" for line in _bomb(10).splitlines()))
    t0 = time.perf_counter()
    res = runner.invoke(app, ["train", str(p), "--run-dir", str(tmp_path / "r"), "--no-progress"])
    one_line_error(res, 2, "bomb.yaml", "aliases expand")
    assert time.perf_counter() - t0 < 5


def test_small_aliases_and_merge_keys_still_work(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("a: &a [1, 2]\nb: [*a, *a]\nc: &c {x: 1}\nd:\n  <<: *c\n  y: 2\n")
    assert load_yaml(p) == {"a": [1, 2], "b": [[1, 2], [1, 2]], "c": {"x": 1}, "d": {"x": 1, "y": 2}}


@pytest.mark.parametrize("text, needle", [
    ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nesting deeper than 64 levels"),
    ("a: &a [*a]\n", "recursive alias"),
])
def test_deep_or_recursive_yaml_is_one_line(tmp_path, text, needle):
    p = tmp_path / "deep.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as exc:
        load_yaml(p)
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_alias_bomb_in_an_override():
    levels = ["&l0 [" + ", ".join(["1"] * 9) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="override .*aliases expand"):
        parse_overrides(["dataset.options.x=[" + ", ".join(levels) + "]"])


def test_non_utf8_config_names_the_file(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    res = runner.invoke(app, ["train", str(p), "--run-dir", str(tmp_path / "r"), "--no-progress"])
    one_line_error(res, 2, "latin.yaml", "not UTF-8")


def test_invalid_yaml_is_one_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML: .*\(line \d+, column \d+\)") as exc:
        load_yaml(p)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------- labels, data

def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def test_huge_label_is_refused_without_allocating(tmp_path):
    """labels {0, 10^9} in a 100-sample .npz: exit 2 in < 5 s naming the value and its count, in a
    forked process allowed 1 GiB more address space than it starts with (the old code built 10^9
    class names and was killed for memory)."""
    import resource

    y = np.zeros(100, np.int64)
    y[50:] = 10**9
    p = _npz(tmp_path / "big.npz", x=np.zeros((100, 4), np.float32), y=y)
    out = tmp_path / "out.json"
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            limit = _vm_size() + 2**30
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            t0 = time.perf_counter()
            res = runner.invoke(app, ["train", "--set", "dataset.name=npz", "--set", f"dataset.path={p}",
                                      "--run-dir", str(tmp_path / "r"), "--no-progress"])
            out.write_text(json.dumps({"code": res.exit_code, "output": res.output, "s": time.perf_counter() - t0}))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    got = json.loads(out.read_text())
    assert got["code"] == 2, got
    flat = " ".join(got["output"].split())
    assert "Traceback" not in flat and "label 1000000000 (50 samples) outside [0, 100)" in flat, flat
    assert got["s"] < 5


def test_label_count_is_capped_in_messages(tmp_path):
    y = np.arange(100, dtype=np.int64) * 1000  # 99 values out of range
    p = _npz(tmp_path / "wide.npz", x=np.zeros((100, 2), np.float32), y=y)
    with pytest.raises(DataFormatError) as exc:
        load_dataset("npz", path=p)
    msg = str(exc.value)
    assert len(msg) < 400 and "99000 (1 sample)" in msg and "and 96 more values" in msg


def test_declared_class_names_bound_the_labels(tmp_path):
    y = np.r_[np.zeros(20), np.ones(19), [7]].astype(np.int64)
    p = _npz(tmp_path / "named.npz", x=np.zeros((40, 2), np.float32), y=y, class_names=np.array(["a", "b"]))
    with pytest.raises(DataFormatError, match=r"y has label 7 \(1 sample\) outside \[0, 2\); 2 class_names"):
        load_dataset("npz", path=p)


def test_empty_classes_message_is_capped(tmp_path):
    y = np.r_[np.zeros(50), np.full(50, 90)].astype(np.int64)  # classes 1..89 empty
    p = _npz(tmp_path / "gaps.npz", x=np.zeros((100, 2), np.float32), y=y)
    with pytest.raises(DataFormatError, match=r"no samples of class\(es\) 1, 2, 3, 4, 5, \.\.\. \(89 classes in all\)"):
        load_dataset("npz", path=p)


def test_empty_npz_is_a_data_error(tmp_path):
    p = _npz(tmp_path / "empty.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(DataFormatError, match="x holds no samples"):
        load_dataset("npz", path=p)
    p2 = _npz(tmp_path / "no-test.npz", x=np.zeros((10, 2), np.float32), y=np.r_[np.zeros(5), np.ones(5)].astype(int),
              x_test=np.zeros((0, 2), np.float32), y_test=np.zeros(0, np.int64))
    with pytest.raises(DataFormatError, match="x_test holds no samples"):
        load_dataset("npz", path=p2)


def test_crafted_npz_header_is_bad_input(tmp_path):
    """An .npz member whose header claims 2.9 TB is refused before numpy allocates it."""
    p = _npz(tmp_path / "huge.npz", x=np.zeros((100, 4), np.float32), y=np.r_[np.zeros(50), np.ones(50)].astype(np.int64))
    with zipfile.ZipFile(p) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (725_000_000_000, 1)})
    members["x.npy"] = buf.getvalue() + members["x.npy"][len(buf.getvalue()):]
    with zipfile.ZipFile(p, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(DataFormatError, match=r"array 'x' declares shape \(725000000000, 1\) float32 \(2,900,000,000,000 bytes\)"):
        load_dataset("npz", path=p)


# --------------------------------------------------------------------------- empty splits

def test_split_that_leaves_no_training_samples():
    y = np.repeat(np.arange(2), 50)
    with pytest.raises(ValueError, match="holds out all 100 samples"):
        train_val_split(y, fraction=0.999, generator=numpy_generator(0, "split"))


def test_val_fraction_0999_is_a_config_error_not_divergence(tmp_path):
    cfg = {"epochs": 1, "device": "cpu", "model": {"depth": 1, "width": 8},
           "dataset": {"name": "synthetic", "val_fraction": 0.999,
                       "options": {"train_per_class": 20, "test_per_class": 5, "shape": [1, 2, 2]}}}
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(cfg))
    res = runner.invoke(app, ["train", str(p), "--run-dir", str(tmp_path / "r"), "--no-progress"])
    flat = one_line_error(res, 2, "dataset.val_fraction", "none to train on")
    assert "diverged" not in flat and "lr" not in flat.replace("lower", "")


# ---------------------------------------------------------------------------------- bounds

@pytest.mark.parametrize("override, needle", [
    ("threads=100000", "threads must lie in [1, 256]; got 100000"),
    ("model.depth=100000", "model.depth must lie in [1, 128]; got 100000"),
    ("model.width=10000000", "model.width must lie in [1, 16384]; got 10000000"),
])
def test_resource_bounds_are_stated(tmp_path, override, needle):
    res = runner.invoke(app, ["train", "--set", override, "--run-dir", str(tmp_path / "r"), "--no-progress"])
    one_line_error(res, 2, needle)


def test_threads_flag_is_bounded(tmp_path):
    res = runner.invoke(app, ["train", "--threads", "100000", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    one_line_error(res, 2, "threads must lie in [1, 256]")


def _spec(tmp_path, body: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(json.dumps({"name": "s", "base": {"epochs": 1, "dataset": {"name": "digits"}}, **body}))
    return p


def test_random_trials_1e9_is_refused_even_with_dry_run(tmp_path):
    p = _spec(tmp_path, {"random": {"trials": 1e9, "params": {"optim.lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}}}})
    t0 = time.perf_counter()
    res = runner.invoke(app, ["sweep", str(p), "--dry-run"])
    one_line_error(res, 2, "random.trials must lie in [1, 100000]; got 1000000000")
    assert time.perf_counter() - t0 < 5


def test_huge_grid_is_refused_with_its_size(tmp_path):
    grid = {"seed": list(range(1000)), "optim.lr": [0.1 * (i + 1) for i in range(1000)], "epochs": list(range(1, 1001))}
    t0 = time.perf_counter()
    res = runner.invoke(app, ["sweep", str(_spec(tmp_path, {"grid": grid})), "--dry-run"])
    one_line_error(res, 2, "expands to 1,000,000,000 runs (1000 x 1000 x 1000)", "at most 100,000")
    assert time.perf_counter() - t0 < 5


def test_sweep_spec_errors_are_one_line_without_pydantic_urls(tmp_path):
    p = _spec(tmp_path, {"grid": {"optim.lr": [-1.0]}, "seeds": "x"})
    res = runner.invoke(app, ["sweep", str(p), "--dry-run"])
    out = one_line_error(res, 2, "invalid sweep spec", "seeds")
    assert "errors.pydantic.dev" not in out and len(res.output.strip().splitlines()) == 1
    p = _spec(tmp_path, {"grid": {"optim.lr": [-1.0, 0.1]}})
    res = runner.invoke(app, ["sweep", str(p), "--dry-run"])
    one_line_error(res, 2, "invalid run config (optim.lr=-1)", "optim.lr must be > 0.0; got -1.0")
    assert "errors.pydantic.dev" not in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("stack", ["0", "-3"])
def test_sweep_stack_below_one(tmp_path, stack):
    p = _spec(tmp_path, {"seeds": [0]})
    res = runner.invoke(app, ["sweep", str(p), "--stack", stack, "--store", str(tmp_path / "st"), "--no-progress",
                              "--executor", "inline"])
    one_line_error(res, 2, f"--stack must be >= 1; got {stack}")


def test_search_unknown_sampler(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\n")
    res = runner.invoke(app, ["search", str(cfg), "--store", str(tmp_path / "st"), "--sampler", "bogus",
                              "--executor", "inline"])
    one_line_error(res, 2, "unknown --sampler 'bogus'; valid: random, tpe")
    res = runner.invoke(app, ["search", str(cfg), "--store", str(tmp_path / "st"), "--trials", "1000000000",
                              "--executor", "inline"])
    one_line_error(res, 2, "--trials must lie in [1, 100000]")


# ------------------------------------------------------------------- leftover tracebacks

TINY_RUN = ["--set", "epochs=2", "--set", "dataset.name=synthetic", "--set", "dataset.options.train_per_class=10",
            "--set", "dataset.options.test_per_class=5", "--set", "dataset.options.shape=[1,2,2]",
            "--set", "model.width=8", "--set", "model.depth=1", "--set", "device=cpu", "--set", "save_features=false",
            "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One epoch of a two-epoch run (resumable); tests copy it."""
    d = tmp_path_factory.mktemp("tiny") / "run"
    res = runner.invoke(app, ["train", *TINY_RUN, "--run-dir", str(d), "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    return d


def _tiny_run(tmp_path, tiny_run) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".nclab.lock")))


def test_metrics_line_that_is_not_an_object(tmp_path, tiny_run):
    d = _tiny_run(tmp_path, tiny_run)
    m = d / "metrics.jsonl"
    m.write_text("[1, 2]\n" + m.read_text())
    res = runner.invoke(app, ["train", *TINY_RUN, "--run-dir", str(d), "--resume"])
    one_line_error(res, 2, "metrics.jsonl", "line 1 is not a JSON object")
    res = runner.invoke(app, ["plot", str(d)])
    one_line_error(res, 2, "line 1 is not a JSON object")


def test_plot_on_a_read_only_run_dir(tmp_path, monkeypatch, tiny_run):
    import errno

    d = _tiny_run(tmp_path, tiny_run)
    real = Path.mkdir

    def read_only(self, *a, **k):
        if self.name == "figures":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = runner.invoke(app, ["plot", str(d)])
    one_line_error(res, 4, "cannot write the figures: read-only file system", "--out")


def test_report_md_escapes_store_strings(tmp_path):
    from nclab.report import build_report
    from nclab.store.index import Owner, RunStore

    st = RunStore(tmp_path / "s")
    o = Owner()
    evil = "<script>alert(1)</script>|x"
    for loss in ("ce", "ls"):
        h = f"h-{loss}"
        cfg = {"seed": 0, "dataset": {"name": evil}, "loss": {"name": loss}, "noise": {"kind": "symmetric", "rate": 0.2}}
        st.register([{"hash": h, "name": h, "config": cfg}], sweep="md-x")
        st.claim(h, o)
        st.complete(h, o, {"test_acc": 0.5, "train_acc_noisy": 1.0, "train.memorization_normalized": 1.0,
                           "train.dilation_normalized": 0.5}, outcome="completed")
    import nclab.report.model_vs_runs as mvr

    real = mvr.section
    mvr.section = lambda rows, out_dir, *, seed=0: (None, None)
    try:
        rep = build_report(tmp_path / "s")
    finally:
        mvr.section = real
    md = Path(rep.markdown).read_text()
    html_text = Path(rep.html).read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "<script>alert" not in html_text
    assert all(p.parent == Path(rep.markdown).parent / "figures" for p in rep.figures)


def test_sweep_report_md_escapes_store_strings(tmp_path):
    from nclab.report import build_report
    from nclab.store.index import Owner, RunStore

    st = RunStore(tmp_path / "s")
    o = Owner()
    for i, loss in enumerate(("<script>x</script>", "ce`|")):
        h = f"h{i}"
        st.register([{"hash": h, "name": h, "config": {"seed": 0, "loss": {"name": loss}}}], sweep="tiny<b>")
        st.claim(h, o)
        st.complete(h, o, {"test_acc": 0.5})
    st.close()
    rep = build_report(tmp_path / "s")
    md = Path(rep.markdown).read_text()
    assert "<script>" not in md and "<b>" not in md and "&lt;script&gt;" in md and "ce\\`\\|" in md
    assert "<script>x" not in Path(rep.html).read_text()  # (the page has its own table-sorting script)
