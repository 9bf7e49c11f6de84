"""``nclab metrics FILE.npz``: the metric suite on saved features."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from nclab.cli._common import console, fail, metric_table


def register(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics_cmd(
        file: Path = typer.Argument(..., help="an .npz with features, labels [, clean_labels, W, b, logits]"),
        convention: str = typer.Option("zhu2021", "--convention", "-c", help="papyan2020 | papyan_colab | zhu2021 | rhubarbwu"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
        num_classes: int = typer.Option(None, "--num-classes", help="C (default: rows of W, or max label + 1)"),
    ) -> None:
        """Neural-collapse, calibration and memorization/dilation metrics of saved features."""
        from nclab.metrics import nc_metrics
        from nclab.metrics.validation import as_tensor, infer_num_classes
        from nclab.store.files import load_feature_file, to_json

        try:
            data = load_feature_file(file)
            if num_classes is None and data.get("W") is None and data.get("logits") is None:
                # C from the labels: refuse sparse labels before allocating C×d state
                num_classes = infer_num_classes(as_tensor(data["labels"], name="labels"), what="--num-classes")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = nc_metrics(
                    data["features"],
                    data["labels"],
                    num_classes=num_classes,
                    weight=data.get("W"),
                    bias=data.get("b"),
                    logits=data.get("logits"),
                    clean_labels=data.get("clean_labels"),
                    convention=convention,
                )
        except (ValueError, TypeError, FileNotFoundError) as exc:
            fail(str(exc))
        out = res.to_dict()
        if as_json:
            typer.echo(to_json(out))
            return
        for w in caught:
            console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
        for note in res.info.get("notes", []):
            console.print(f"[dim]note:[/] {note}", highlight=False)
        title = f"{file.name}: n={out['n_samples']}, C={out['num_classes']}, d={out['feature_dim']}, convention={convention}"
        console.print(f"[bold]{title}[/]", highlight=False)
        console.print(metric_table(out, title=""))
