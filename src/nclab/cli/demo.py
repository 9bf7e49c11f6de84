"""``nclab demo``: the main job — CE vs LS under label noise, paired by seed."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from nclab.cli._common import console, fail, fmt


def _interval(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        dataset: str = typer.Option("digits", "--dataset", "-d", help="digits (bundled, offline) | fashion-mnist"),
        out: Path = typer.Option(Path("nclab-demo"), "--out", "-o", help="output directory"),
        pairs: int = typer.Option(12, "--pairs", help="seeds per loss (CE and LS of a seed share noise, init, batches)"),
        alpha: float = typer.Option(0.1, "--alpha", help="label-smoothing alpha for the LS runs"),
        noise: float = typer.Option(0.2, "--noise", help="symmetric label-noise rate (flip to another class)"),
        epochs: int = typer.Option(None, "--epochs", help="override the preset's epochs (the schedule anneals to them)"),
        as_json: bool = typer.Option(False, "--json", help="print the paired summary as JSON only"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="print a line now and then"),
    ) -> None:
        """Train PAIRS seeds of a small MLP with CE and with LS(alpha) on noisy labels; paired LS − CE differences."""
        from nclab.config import ConfigError
        from nclab.data import DataNotFoundError
        from nclab.demo import run_demo

        if not as_json:
            console.print(f"[bold]nclab demo[/]: {dataset}, binary, symmetric noise {noise:g}, CE vs LS({alpha:g}), "
                          f"{pairs} paired seeds", highlight=False)
        say = (lambda line: console.print(line, highlight=False)) if progress and not as_json else None
        try:
            res = run_demo(dataset=dataset, out_dir=out, pairs=pairs, alpha=alpha, noise_rate=noise, epochs=epochs,
                           on_progress=say)
        except (ValueError, ConfigError, DataNotFoundError, RuntimeError) as exc:
            fail(str(exc))
        if as_json:
            print(json.dumps(res.to_dict(), indent=2))
            return
        console.print(f"training: {res.training_seconds:.1f} s wall, {res.training_cpu_seconds:.1f} s CPU; "
                      f"{2 * res.pairs} runs stacked, {res.epochs} epochs, cosine", highlight=False)
        table = Table(title=f"{dataset}, final epoch: means over {res.pairs} seeds, paired LS − CE with its 95 % "
                            f"t-interval, seeds in which LS wins (higher accuracy, lower otherwise); (n.): divided by the "
                            f"clean-centroid distance",
                      title_justify="left")
        table.add_column("metric", style="cyan")
        table.add_column("CE", justify="right")
        table.add_column(f"LS({alpha:g})", justify="right")
        table.add_column("LS − CE", justify="right")
        table.add_column("95 % interval", justify="right", no_wrap=True)
        table.add_column("LS wins", justify="right")
        for d in res.differences:
            dd = d.to_dict()
            table.add_row(d.label, fmt(dd["ce_mean"]), fmt(dd["ls_mean"]), f"{d.estimate:+.4f}", _interval(d.ci),
                          f"{d.ls_wins}/{res.pairs}")
        console.print(table)
        console.print("figures (seed 0, and the paired differences):")
        for p in res.figures:
            console.print(f"  {p}", highlight=False)
        console.print(f"per-seed values: {res.out_dir / 'pairs.csv'}; runs: {res.out_dir}/ce-0 … "
                      f"{res.out_dir}/ls-{res.pairs - 1}", highlight=False)
        console.print(f"find the mislabeled samples: nclab detect {res.runs[0].run_dir}", highlight=False)
