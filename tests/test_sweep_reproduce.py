"""`nclab reproduce memorization-dilation --scale small` end to end at a tiny size, then
`nclab report` rebuilding from the store alone."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from nclab.cli.sweep import register


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path):
    train = pytest.importorskip("nclab.train")
    if not hasattr(train, "train"):
        pytest.skip("trainer not available")
    app = typer.Typer()
    register(app)
    store = tmp_path / "study"
    res = CliRunner().invoke(app, ["reproduce", "memorization-dilation", "--scale", "small", "--tiny", "--datasets", "digits",
                                   "--store", str(store), "--executor", "inline", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "12 runs" in res.output and "12 completed now" in res.output
    md = (store / "report" / "report.md").read_text()
    for h in ("H1-ce-digits", "H2-dilation", "H3-bias"):  # 2 seeds: every claim is "insufficient data"
        assert f"| {h} | insufficient data | insufficient data |" in md
    assert "Every run: terminal phase and geometry per cell" in md
    assert (store / "report" / "runs.csv").read_text().count("\n") == 12 + 1  # every run, one row each
    assert (store / "report" / "figures" / "digits_md_scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rerun: nothing is trained again; the report rebuilds from the store alone
    res2 = CliRunner().invoke(app, ["reproduce", "memorization-dilation", "--scale", "small", "--tiny", "--datasets", "digits",
                                    "--store", str(store), "--executor", "inline", "--no-progress",
                                    "--no-report"])
    assert res2.exit_code == 0 and "0 completed now, 12 already done" in res2.output
    (store / "report" / "report.md").unlink()
    res3 = CliRunner().invoke(app, ["report", str(store)])
    assert res3.exit_code == 0, res3.output
    assert (store / "report" / "report.md").exists() and "H1-ce-digits: insufficient data" in res3.output
