"""``nclab analyze``: neural-collapse metrics of a trained model, at the last layer and through depth."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from nclab.cli._common import console, fail, fmt, metric_table


def layer_profile_figure(path: Path, summaries: dict[str, dict[str, Any]], *, title: str = "") -> None:
    """NC1 (log scale), ETF error of the centred means and orthogonal-frame error of the
    uncentred means against layer depth (one point per named layer)."""
    from nclab.report.style import OKABE_ITO, apply_style, plt, save

    apply_style()
    names = list(summaries)
    xs = list(range(len(names)))
    panels = [("nc1", "NC1", True), ("nc2_etf_error_means", "ETF error (centred means)", False),
              ("nc2_orthogonal_error_means", "orthogonal-frame error (means)", False)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for i, (ax, (key, label, logy)) in enumerate(zip(axes, panels)):
        pts = [(x, summaries[n].get(key)) for x, n in zip(xs, names)]
        pts = [(x, v) for x, v in pts if v is not None and (not logy or v > 0)]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=OKABE_ITO[i])
        if logy and pts:
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)


def stored_run_features(run_dir: Path, *, split: str, reason: str) -> dict[str, Any]:
    """A run's final training features from ``features.npz`` (written by the trainer), for runs
    whose data or model cannot be rebuilt in this process (in-memory data, a model passed from
    Python, a dataset/model registered elsewhere). Only the training split is stored."""
    from nclab.store.files import load_feature_file

    path = run_dir / "features.npz"
    if split != "train":
        raise ValueError(f"{reason}. Only the training split's final features are stored in the run dir "
                         f"({path}); --split test needs the data and model")
    if not path.is_file():
        raise ValueError(f"{reason}. {path} does not exist either (train with save_features: true and let the run finish)")
    f = load_feature_file(path)
    try:
        env = json.loads((run_dir / "env.json").read_text())
        f["class_names"] = env.get("data", {}).get("class_names")
    except (OSError, ValueError):
        f["class_names"] = None
    f["note"] = (f"{reason.split(';')[0]}: metrics from the stored final features; no depth profile "
                 "(it needs the model)")
    return f


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

        from nclab.collect import collect, default_layers, features_of, layer_summary  # noqa: F401
        from nclab.collect.runs import load_run, load_user_model
        from nclab.store.files import to_json

        if split not in ("train", "test"):
            fail(f"--split must be train or test; got {split!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            fail(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
        if out is not None and out.exists() and not out.is_dir():
            fail(f"--out {out} is a file; give a folder (features.png and layers.png go there)")
        stored = None
        class_names = None
        try:
            if (target / "config.yaml").is_file() if target.is_dir() else False:
                if model or model_class or dataset:
                    fail("a run directory rebuilds its own model and data; drop --model/--model-class/--dataset")
                try:
                    run = load_run(target, device=device)
                except ValueError as exc:  # data/model not rebuildable here: the run dir's own files
                    stored = stored_run_features(target, split=split, reason=str(exc))
                    net, data, class_names = None, None, stored["class_names"]
                    what = f"{target.name} (final features.npz, {split})"
                else:
                    net, d = run.model, run.data
                    if split == "train":
                        data = (d.x_train, d.y_train, d.metric_clean_train)
                    else:
                        data = (d.x_test, d.y_test)
                    class_names = d.info.get("class_names")
                    what = f"{target.name} (epoch {run.epoch}, {split})"
            else:
                if target.is_dir():
                    fail(f"{target} is a folder without config.yaml: not an nclab run directory")
                if not target.is_file():
                    fail(f"{target} does not exist")
                if (model is None) == (model_class is None):
                    fail("a state dict needs exactly one of --model NAME or --model-class package.module:Class")
                if dataset is None:
                    fail("a state dict needs --dataset NAME (the data to measure on)")
                from nclab.data import load_dataset

                splits = load_dataset(dataset, classes=classes, per_class=per_class)
                try:
                    kwargs = json.loads(model_kwargs)
                except ValueError as exc:
                    fail(f"--model-kwargs is not valid JSON: {exc}")
                if model_class is not None:
                    net = load_user_model(target, model_class, kwargs=kwargs)
                else:
                    from nclab.models import build_model

                    net = build_model(model, input_shape=splits.input_shape, num_classes=splits.num_classes, **kwargs)
                    try:  # an nclab checkpoint (record line + archive) or a plain torch file
                        from nclab.train.checkpoint import MAGIC, load_checkpoint

                        with open(target, "rb") as fh:
                            is_nclab = fh.read(len(MAGIC)) == MAGIC
                        state = (load_checkpoint(target) if is_nclab
                                 else torch.load(target, map_location="cpu", weights_only=True))
                    except Exception as exc:  # not a torch file, a refused pickle, a corrupt archive
                        fail(f"{target} cannot be read as a weights-only torch file: {str(exc).splitlines()[0]}")
                    state = state.get("model", state) if isinstance(state, dict) else state
                    net.load_state_dict(state)
                    net.eval()
                data = (splits.train_x, splits.train_y) if split == "train" else (splits.test_x, splits.test_y)
                class_names = splits.class_names
                what = f"{target.name} on {dataset} ({split})"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if stored is not None:
                    from nclab.metrics import nc_metrics

                    res = nc_metrics(stored["features"], stored["labels"], clean_labels=stored.get("clean_labels"),
                                     weight=stored.get("W"), bias=stored.get("b"), logits=stored.get("logits"),
                                     convention=convention)
                    res.info["layer"] = "classifier (features.npz)"
                    caught_note = stored["note"]
                else:
                    names = [s.strip() for s in layers.split(",") if s.strip()] if layers else default_layers(net)
                    res = collect(net, data, layer=layer, layers=names, convention=convention, device=device,
                                  batch_size=batch_size)
                    caught_note = None
        except typer.Exit:
            raise
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
            fail(str(exc))
        values = res.to_dict()
        per_layer = res.info.get("layers", {})
        if as_json:
            typer.echo(to_json({"target": str(target), "split": split, "classifier_layer": res.info["layer"],
                                "metrics": values, "layers": per_layer}))
        else:
            for w in caught:
                console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
            if caught_note:
                console.print(f"[yellow]note:[/] {caught_note}", highlight=False)
            console.print(f"[bold]{what}: n={values['n_samples']}, C={values['num_classes']}, d={values['feature_dim']}, "
                          f"classifier={res.info['layer']}, convention={convention}[/]", highlight=False)
            console.print(metric_table(values, title=""))
            if per_layer:
                from rich.table import Table

                t = Table(title="collapse through depth", title_justify="left")
                for col in ("layer", "d", "NC1", "ETF err", "orth err", "Σ_W"):
                    t.add_column(col, justify="right" if col != "layer" else "left")
                for n, s in per_layer.items():
                    t.add_row(n, str(s["feature_dim"]), fmt(s["nc1"]), fmt(s["nc2_etf_error_means"]),
                              fmt(s["nc2_orthogonal_error_means"]), str(s["within"]))
                console.print(t)
        if out is not None:
            from nclab.report.features import feature_scatter

            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from nclab.cli._common import EXIT_IO, os_error_message

                fail(f"cannot create --out {out}: {os_error_message(exc)}", EXIT_IO)
            if stored is not None:
                f = {k: stored[k][:20000] for k in ("features", "labels", "clean_labels") if k in stored}
                w_np, b_np = stored.get("W"), stored.get("b")
            else:
                f = features_of(net, data, layer=layer, device=device, batch_size=batch_size, max_samples=20000)
                lin = dict(net.named_modules())[res.info["layer"]]
                w_np = lin.weight.detach().cpu().numpy()
                b_np = None if lin.bias is None else lin.bias.detach().cpu().numpy()
            clean = f.get("clean_labels", f["labels"])
            C = int(values["num_classes"])
            names_c = class_names if class_names is not None and len(class_names) >= C else None
            feature_scatter(out / "features.png", f["features"], f["labels"], clean,
                            class_names=None if names_c is None else names_c[:C],
                            weight=w_np, bias=b_np, title=f"{what}: classifier input")
            written = [out / "features.png"]
            if per_layer:
                layer_profile_figure(out / "layers.png", per_layer, title=f"{what}: collapse through depth")
                written.append(out / "layers.png")
            if not as_json:
                console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
