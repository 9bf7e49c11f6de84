"""``nclab demo``: the main job — CE vs LS under label noise, side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nclab.cli._common import console, fail, fmt


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        dataset: str = typer.Option("digits", "--dataset", "-d", help="digits (bundled, offline) | fashion-mnist"),
        out: Path = typer.Option(Path("nclab-demo"), "--out", "-o", help="output directory"),
        alpha: float = typer.Option(0.1, "--alpha", help="label-smoothing alpha for the LS run"),
        noise: float = typer.Option(0.2, "--noise", help="symmetric label-noise rate (flip to another class)"),
        seed: int = typer.Option(0, "--seed", help="seed of the noise, split, initialization and batches"),
        epochs: int = typer.Option(None, "--epochs", help="override the preset's epochs"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Train a small MLP with CE and with LS(alpha) on noisy labels; compare memorization and dilation."""
        from nclab.config import ConfigError
        from nclab.data import DataNotFoundError
        from nclab.demo import TABLE_ROWS, run_demo

        console.print(f"[bold]nclab demo[/]: {dataset}, binary, symmetric noise {noise:g}, CE vs LS({alpha:g})")
        try:
            res = run_demo(dataset=dataset, out_dir=out, alpha=alpha, noise_rate=noise, seed=seed, epochs=epochs,
                           progress=progress, on_run_done=lambda lab: console.print(f"  finished {lab}"))
        except (ValueError, ConfigError, DataNotFoundError, RuntimeError) as exc:
            fail(str(exc))
        table = Table(title=f"{dataset}: final epoch ({res.runs[0].final['epoch']})", title_justify="left")
        table.add_column("metric", style="cyan")
        for r in res.runs:
            table.add_column(r.label, justify="right")
        for name, key in TABLE_ROWS:
            table.add_row(name, *[fmt(r.final.get(key)) for r in res.runs])
        console.print(table)
        console.print("figures:")
        for r in res.runs:
            console.print(f"  {r.scatter}")
        console.print(f"  {res.curves}")
        console.print(f"runs (metrics.jsonl, config.yaml, checkpoints, dynamics): "
                      f"{', '.join(str(r.run_dir) for r in res.runs)}")
        console.print(f"find the mislabeled samples: nclab detect {res.runs[0].run_dir}", highlight=False)
