"""``nclab plot RUN_DIR``: curves against epoch for any training run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nclab.cli._common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``plot`` command to ``app``."""

    @app.command("plot")
    def plot_cmd(
        run_dir: Path = typer.Argument(..., help="an nclab run directory (reads its metrics.jsonl)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder [default: RUN_DIR/figures]"),
    ) -> None:
        """Loss, accuracy, NC1 and memorization/dilation against epoch, one PNG each."""
        from nclab.report.curves import plot_run

        try:
            paths = plot_run(run_dir, out_dir=out)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        for p in paths:
            console.print(f"wrote {p}", highlight=False, soft_wrap=True)
