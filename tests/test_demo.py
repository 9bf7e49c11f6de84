import math

import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.demo import TABLE_ROWS, run_demo

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_both_losses_and_writes_figures(tmp_path):
    res = run_demo(out_dir=tmp_path, epochs=3, progress=False)
    assert [r.label for r in res.runs] == ["ce", "ls(0.1)"]
    for r in res.runs:
        assert r.status == "completed" and r.final["epoch"] == 3
        assert r.scatter.read_bytes()[:8] == PNG
        for _, key in TABLE_ROWS:
            if key.startswith("test.dilation"):
                continue
            v = r.final[key]
            assert v is not None and math.isfinite(v), key
        assert r.final["test_acc"] > 0.5  # beats chance on a binary task
    assert res.curves.read_bytes()[:8] == PNG
    # both losses saw the same noisy labels
    assert res.runs[0].final["train.realized_noise_rate"] == res.runs[1].final["train.realized_noise_rate"]


def test_demo_cli_table_and_bad_dataset(tmp_path):
    _register_all()
    runner = CliRunner()
    out = runner.invoke(app, ["demo", "--epochs", "1", "--out", str(tmp_path), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "memorization" in out.stdout and "ls(0.1)" in out.stdout
    bad = runner.invoke(app, ["demo", "--dataset", "cifar", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown demo dataset 'cifar'" in bad.output


@pytest.mark.slow
@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_demo_fashion_mnist(tmp_path):
    res = run_demo(dataset="fashion-mnist", out_dir=tmp_path, epochs=2, progress=False)
    assert all(r.final["test_acc"] > 0.8 for r in res.runs)
