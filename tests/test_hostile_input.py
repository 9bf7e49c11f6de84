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
