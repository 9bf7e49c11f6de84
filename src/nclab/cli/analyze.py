"""``nclab analyze``: neural-collapse metrics of a trained model, at the last layer and through depth.

The work is :func:`nclab.collect.analyze.analyze`; this module parses, prints and asks
:mod:`nclab.report.analysis` for the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nclab.cli._common import EXIT_IO, console, fail, fmt, metric_table, os_error_message


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to ``app``."""

    @app.command("analyze")
    def analyze_cmd(
        target: Path = typer.Argument(..., help="an nclab run directory, or a state-dict file (.pt)"),
        model: Optional[str] = typer.Option(None, "--model", help="registered nclab model for a state dict (mlp, cnn, resnet18)"),
        model_class: Optional[str] = typer.Option(None, "--model-class", help="your model class, 'package.module:Class'"),
        model_kwargs: str = typer.Option("{}", "--model-kwargs", help="JSON keyword arguments for the model"),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset for a state dict (digits, fashion-mnist, ...)"),
        classes: Optional[int] = typer.Option(None, "--classes", help="keep labels 0..C-1 of the dataset [default: all classes]"),
        per_class: Optional[int] = typer.Option(None, "--per-class", help="at most this many training samples per class [default: all]"),
        split: str = typer.Option("train", "--split", help="train | test"),
        layer: Optional[str] = typer.Option(None, "--layer", help="the classifier layer (default: found automatically)"),
        layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated module names for the depth profile "
                                             "(default: every activation module)"),
        convention: str = typer.Option("zhu2021", "--convention", "-c", help="papyan2020 | papyan_colab | zhu2021 | rhubarbwu"),
        device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda"),
        batch_size: int = typer.Option(512, "--batch-size", help="samples per forward pass"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
        out: Optional[Path] = typer.Option(None, "--out", help="folder for features.png and layers.png [default: no figures]"),
    ) -> None:
        """Neural-collapse metrics of a trained model (any nn.Module), last layer and per layer."""
        import torch

        from nclab.collect.analyze import analyze
        from nclab.store.files import to_json

        if split not in ("train", "test"):
            fail(f"--split must be train or test; got {split!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            fail(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
        if out is not None and out.exists() and not out.is_dir():
            fail(f"--out {out} is a file; give a folder (features.png and layers.png go there)")
        try:
            kwargs = json.loads(model_kwargs)
        except ValueError as exc:
            fail(f"--model-kwargs is not valid JSON: {exc}")
        names = [s.strip() for s in layers.split(",") if s.strip()] if layers else None
        try:
            a = analyze(target, model=model, model_class=model_class, model_kwargs=kwargs, dataset=dataset,
                        classes=classes, per_class=per_class, split=split, layer=layer, layers=names,
                        convention=convention, device=device, batch_size=batch_size)
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
            fail(str(exc))
        values = a.result.to_dict()
        if as_json:
            typer.echo(to_json(a.to_dict()))
        else:
            for w in a.warnings:
                console.print(f"[yellow]warning:[/] {w}", highlight=False)
            if a.note:
                console.print(f"[yellow]note:[/] {a.note}", highlight=False)
            console.print(f"[bold]{a.what}: n={values['n_samples']}, C={values['num_classes']}, d={values['feature_dim']}, "
                          f"classifier={a.result.info['layer']}, convention={convention}[/]", highlight=False)
            console.print(metric_table(values, title=""))
            if a.per_layer:
                from rich.table import Table

                t = Table(title="collapse through depth", title_justify="left")
                for col in ("layer", "d", "NC1", "ETF err", "orth err", "Σ_W"):
                    t.add_column(col, justify="right" if col != "layer" else "left")
                for n, s in a.per_layer.items():
                    t.add_row(n, str(s["feature_dim"]), fmt(s["nc1"]), fmt(s["nc2_etf_error_means"]),
                              fmt(s["nc2_orthogonal_error_means"]), str(s["within"]))
                console.print(t)
        if out is not None:
            from nclab.report.analysis import write_figures

            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                fail(f"cannot create --out {out}: {os_error_message(exc)}", EXIT_IO)
            written = write_figures(a, out)
            if not as_json:
                console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
