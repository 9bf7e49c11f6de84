"""``nclab plot RUN_DIR [RUN_DIR ...]``: curves against epoch for any training run(s)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nclab.cli._common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``plot`` command to ``app``."""

    @app.command("plot")
    def plot_cmd(
        run_dirs: list[Path] = typer.Argument(..., help="nclab run directories (each read from its metrics.jsonl)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="output folder [default: RUN_DIR/figures; required for several runs]"),
    ) -> None:
        """Loss, accuracy, NC1 and memorization/dilation against epoch, one PNG each.

        Several run directories are overlaid in one set of figures (colour = run).
        """
        from nclab.report.curves import plot_run, plot_runs

        if len(run_dirs) > 1 and out is None:
            fail("several run directories need --out FOLDER for the overlaid figures")
        try:
            paths = plot_run(run_dirs[0], out_dir=out) if len(run_dirs) == 1 else plot_runs(run_dirs, out_dir=out)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        except OSError as exc:  # a read-only or full disk where the figures go
            from nclab.cli._common import EXIT_IO, os_error_message

            fail(f"cannot write the figures: {os_error_message(exc)} (pass --out FOLDER elsewhere)", EXIT_IO)
        for p in paths:
            console.print(f"wrote {p}", highlight=False, soft_wrap=True)
