"""The built wheel works on its own: a fresh venv holding only the wheel, which sees this
interpreter's installed packages (torch included) instead of installing them again, a check
that every declared dependency is there in a version the wheel accepts, and ``nclab train``
from a config shipped inside the package, run outside the checkout, its output sent to a log
file (plain progress, one line per epoch)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _can_build_offline() -> bool:
    try:
        import setuptools

        return int(setuptools.__version__.split(".")[0]) >= 77
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_wheel_installs_in_a_fresh_venv_and_trains_from_a_shipped_config(tmp_path):
    dist = tmp_path / "dist"
    # the build backend of this environment when it is recent enough (no network); else pip's isolated build
    isolation = ["--no-build-isolation"] if _can_build_offline() else []
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", dist, ROOT])
    (wheel,) = dist.glob("nclab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"nclab/py.typed", "nclab/configs/digits-binary.yaml", "nclab/configs/sweeps/digits-md.yaml"} <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Classifier: Typing :: Typed" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The fresh venv sees this interpreter's site-packages *after* its own (a plain path in a
    # .pth file: the .pth files in there, such as an editable nclab, are not processed), so it
    # reuses the installed torch, and pip (also found there) installs only the wheel.
    (own_site,) = [Path(p) for p in _run([py, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.split()]
    (own_site / "_outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-index", wheel], timeout=600)
    # every dependency the wheel declares (extras aside) is importable there, in a version it accepts
    check = textwrap.dedent("""
        import importlib.metadata as md, sys
        from packaging.requirements import Requirement
        reqs = [Requirement(r) for r in md.requires("nclab") or []]
        core = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
        def have(r):
            try:
                return md.version(r.name)
            except md.PackageNotFoundError:
                return None
        bad = [f"{r} (found {have(r)})" for r in core
               if have(r) is None or not r.specifier.contains(have(r), prereleases=True)]
        if bad:
            sys.exit("unmet dependencies: " + "; ".join(bad))
        for r in core:  # and each imports
            __import__({"scikit-learn": "sklearn", "pyyaml": "yaml", "markdown-it-py": "markdown_it"}
                       .get(r.name.lower(), r.name.lower().replace("-", "_")))
        print(len(core))
    """)
    n_deps = int(_run([py, "-c", check], cwd=tmp_path).stdout)
    assert n_deps >= 10  # torch, numpy, scipy, ... as declared in pyproject.toml

    work = tmp_path / "elsewhere"  # no configs/ folder here: the config must come from the package
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env["NCLAB_PROGRESS_SECONDS"] = "0"
    nclab = env_dir / "bin" / "nclab"
    out = _run([nclab, "--version"], cwd=work, env=env)
    import nclab as here

    assert out.stdout.strip() == f"nclab {here.__version__}"
    shown = _run([py, "-m", "nclab", "config", "show", "digits-binary"], cwd=work, env=env).stdout
    assert "name: digits-binary" in shown
    # ``nclab train NAME > log 2>&1``: the log shows each epoch, in plain text (not a terminal)
    env["COLUMNS"] = "80"
    log = tmp_path / "log"
    with open(log, "w") as fh:
        proc = subprocess.run([str(nclab), "train", "digits-binary", "--set", "epochs=2", "--set", "save_features=false",
                               "--run-dir", "run"], stdout=fh, stderr=subprocess.STDOUT, cwd=work, env=env, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    lines = [ln for ln in text.splitlines() if ln.startswith("digits-binary: epoch")]
    assert [ln.split()[2] for ln in lines] == ["1/2", "2/2"], text
    assert "loss" in lines[0] and "test" in lines[0] and "\x1b[" not in text  # plain, no terminal codes
    assert "completed" in text
    assert (work / "run" / "metrics.jsonl").is_file() and (work / "run" / "config.yaml").is_file()
    # the installed package is the wheel's, not the checkout's
    where = _run([py, "-c", "import nclab, sys; print(nclab.__file__)"], cwd=work, env=env).stdout
    assert str(env_dir) in where
