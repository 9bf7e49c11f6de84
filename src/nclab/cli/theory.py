"""``nclab theory ufm|md``: the unconstrained-features and memorization-dilation models."""

from __future__ import annotations

from pathlib import Path

import typer

from nclab.cli._common import console, fail, fmt


def _floats(text: str, *, name: str) -> list[float]:
    """Parse ``"0,0.1,0.2"`` or a range ``"0:0.4:9"`` (start:stop:count, inclusive)."""
    try:
        if ":" in text:
            a, b, n = text.split(":")
            n = int(n)
            if n < 1:
                raise ValueError
            return [float(a) + (float(b) - float(a)) * i / max(n - 1, 1) for i in range(n)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--{name}: expected a comma list (0,0.1,0.2) or start:stop:count (0:0.4:9); got {text!r}")
        raise  # unreachable


def _wrapped_tables(title: str, headers, rows, *, keys: int, width: int) -> list:
    """Split a wide table column-wise into stacked tables that each fit ``width``.

    The first ``keys`` columns (the row's identity) repeat in every block; a column never
    truncates (``overflow="fold"`` wraps it if even one block is too wide).
    """
    from rich import box
    from rich.table import Table

    # cell text + 2 padding + 1 separator; +2 for the table's outer edges
    need = [max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(headers)] if rows else \
        [len(h) + 3 for h in headers]
    base = sum(need[:keys]) + 2
    blocks: list[list[int]] = [[]]
    used = base
    for i in range(keys, len(headers)):
        if blocks[-1] and used + need[i] > width:
            blocks.append([])
            used = base
        blocks[-1].append(i)
        used += need[i]
    tables = []
    for n, block in enumerate(blocks):
        cols = list(range(keys)) + block
        part = f" ({n + 1}/{len(blocks)})" if len(blocks) > 1 else ""
        table = Table(title=title + part, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        for i in cols:
            table.add_column(headers[i], justify="right", overflow="fold")
        for r in rows:
            table.add_row(*(r[i] for i in cols))
        tables.append(table)
    return tables


def register(app: typer.Typer) -> None:
    theory = typer.Typer(help="Theory: the unconstrained-features model and the memorization-dilation model.",
                         no_args_is_help=True)
    app.add_typer(theory, name="theory")

    @theory.command("ufm")
    def ufm_cmd(
        classes: int = typer.Option(..., "--classes", help="number of classes N"),
        per_class: int = typer.Option(..., "--per-class", help="samples per class K"),
        lambda_w: float = typer.Option(..., "--lambda-w", help="weight decay on W"),
        lambda_h: float = typer.Option(..., "--lambda-h", help="weight decay on the features H"),
        loss: str = typer.Option("ce", "--loss", help="ce | ls | mse (or any nclab loss)"),
        alpha: float = typer.Option(None, "--alpha", help="smoothing for ls / lr"),
        positive: bool = typer.Option(True, "--positive/--no-positive", help="constrain features H >= 0"),
        dim: int = typer.Option(None, "--dim", help="feature dimension d >= N (default N)"),
        bias: bool = typer.Option(False, "--bias/--no-bias", help="add a classifier bias"),
        lambda_b: float = typer.Option(0.0, "--lambda-b", help="weight decay on the bias"),
        starts: int = typer.Option(4, "--starts", help="seeded random starts"),
        seed: int = typer.Option(0, "--seed"),
        tol: float = typer.Option(1e-8, "--tol", help="stop at projected-gradient 2-norm <= tol"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        probe_dead: bool = typer.Option(False, "--probe-dead-class",
                                        help="also test whether the dead-class configuration is a global "
                                             "minimum, a local one or neither (H >= 0 only)"),
    ) -> None:
        """Solve the UFM and compare with its closed form."""
        from rich.table import Table

        from nclab.store.files import to_json
        from nclab.theory.ufm import solve_ufm

        try:
            res = solve_ufm(num_classes=classes, per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h,
                            dim=dim, loss=loss, alpha=alpha, positive=positive, bias=bias, lambda_b=lambda_b,
                            starts=starts, seed=seed, tol=tol)
        except ValueError as exc:
            fail(str(exc))
        out = res.to_dict()
        if probe_dead:
            if not positive:
                fail("--probe-dead-class needs --positive (a dead class sits at the bound H = 0)")
            from nclab.theory.ufm import probe_dead_class

            try:
                out["dead_class"] = probe_dead_class(
                    num_classes=classes, per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h, loss=loss,
                    alpha=alpha, dim=dim, bias=bias, lambda_b=lambda_b, starts=starts, seed=seed, tol=tol)
            except ValueError as exc:
                fail(str(exc))
        if as_json:
            typer.echo(to_json(out))
            return
        cf = out["closed_form"] or {}
        rel = out["relative_error"] or {}
        table = Table(title=f"UFM N={classes} K={per_class} loss={out['settings']['loss']} "
                            f"{'H>=0' if positive else 'H free'}", title_justify="left")
        for col in ("quantity", "solver", "closed form", "rel. error"):
            table.add_column(col, justify="right" if col != "quantity" else "left")
        for key in ("margin", "feature_norm", "weight_norm", "objective"):
            table.add_row(key, fmt(out[key]), fmt(cf.get(key)), fmt(rel.get(key)))
        console.print(table)
        st = Table(title="structure", title_justify="left")
        st.add_column("metric")
        st.add_column("value", justify="right")
        for key in ("within_class_variability", "orthogonal_frame_error", "etf_error_means", "etf_error_weights",
                    "self_duality_error", "margin_min", "accuracy"):
            st.add_row(key, fmt(out.get(key)))
        console.print(st)
        geometry = cf.get("geometry", "—")
        console.print(f"converged={out['converged']} (‖pg‖₂={out['pg_norm']:.2e} ≤ {tol:g}), "
                      f"closed-form geometry: {geometry}, start spread {out['start_spread']:.2e}")
        if probe_dead:
            p = out["dead_class"]
            console.print(f"dead class {p['settings']['dead']}: objective {p['dead_objective']:.6g} vs global "
                          f"{p['global_objective']:.6g}; first-order violation {p['kkt_violation']:.1e}; "
                          f"{len(p['perturbed'])} perturbed re-solves reach ≥ {p['lowest_perturbed']:.6g} "
                          f"→ [bold]{p['status']}[/]")

    @theory.command("md")
    def md_cmd(
        classes: int = typer.Option(2, "--classes", help="number of classes N"),
        per_class: int = typer.Option(10, "--per-class", help="K (scales the feature regularizer)"),
        lambda_w: float = typer.Option(5e-3, "--lambda-w"),
        lambda_h: float = typer.Option(5e-3, "--lambda-h"),
        etas: str = typer.Option("0:0.4:9", "--etas", help="noise fractions: list or start:stop:count"),
        alphas: str = typer.Option("0.05,0.1,0.2,0.3", "--alphas", help="LS smoothing values (CE is always included)"),
        expressivity: str = typer.Option("0.5", "--expressivity", help="λ values (r >= λ M), list"),
        extra_loss: list[str] = typer.Option([], "--loss", help="extra losses, e.g. focal:2 or lr:0.1 (repeatable)"),
        starts: int = typer.Option(3, "--starts"),
        seed: int = typer.Option(0, "--seed"),
        workers: int = typer.Option(1, "--workers", help="parallel processes"),
        test_noise: str = typer.Option("gaussian", "--test-noise", help="gaussian | sphere"),
        constraint: str = typer.Option("hard", "--constraint",
                                       help="hard: r >= λM exactly | soft: cost μ/2·max(0, λM − r)²"),
        penalty: float = typer.Option(10.0, "--penalty", help="μ of the soft expressivity cost"),
        out: Path = typer.Option(Path("theory_md"), "--out", help="folder for the plots and rows.json"),
        as_json: bool = typer.Option(False, "--json", help="print the rows as JSON instead of a table"),
    ) -> None:
        """Sweep the memorization-dilation model over η, α and λ; print a table, write plots.

        Every row reports ``min_feature`` (>= 0: all modeled features are non-negative) and
        whether the expressivity constraint binds (``constraint_binds``, ``expressivity_slack`` = D − λM).
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from nclab.report.theory_plots import write_md_figures
        from nclab.store.files import atomic_write_text, to_json
        from nclab.theory.md_model import best_alpha_by_eta, dm_slopes, md_grid, md_sweep

        losses: list[tuple[str, float | None]] = [("ce", None)]
        alpha_values = _floats(alphas, name="alphas")
        bad = [a for a in alpha_values if not 0.0 <= a < 1.0]
        if bad:
            fail(f"--alphas: label smoothing alpha must lie in [0, 1); got {', '.join(f'{a:g}' for a in bad)}")
        losses += [("ls", a) for a in alpha_values if a > 0]  # alpha 0 is CE, which is always included
        for spec in extra_loss:
            name, _, val = spec.partition(":")
            losses.append((name, float(val) if val else None))
        common = dict(num_classes=classes, per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h,
                      starts=starts, seed=seed, test_noise=test_noise, constraint=constraint, penalty=penalty)
        points = md_grid(etas=_floats(etas, name="etas"), losses=losses,
                         expressivities=_floats(expressivity, name="expressivity"), **common)
        # focal takes gamma, not alpha: route the value to the right keyword
        for p in points:
            if p["loss"] == "focal":
                p["gamma"] = p.pop("alpha")
        try:
            from nclab.theory.md_model import validate_md_points

            validate_md_points(points, losses=losses, num_classes=classes, per_class=per_class, lambda_w=lambda_w,
                               lambda_h=lambda_h, starts=starts, constraint=constraint, penalty=penalty)
        except ValueError as exc:
            fail(str(exc))
        with Progress(TextColumn("[bold]M-D sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=as_json, disable=as_json) as bar:
            task = bar.add_task("solve", total=len(points))
            rows = md_sweep(points, workers=workers, progress=lambda done, total: bar.update(task, completed=done))
        out.mkdir(parents=True, exist_ok=True)
        payload = to_json(rows)
        atomic_write_text(out / "rows.json", payload)
        figs = write_md_figures(rows, out)
        if as_json:
            typer.echo(payload)
            return
        title = (f"memorization-dilation model (N={classes}, {constraint} expressivity"
                 f"{f', μ={penalty:g}' if constraint == 'soft' else ''}; our reconstruction)")
        headers = ("loss fn", "λ", "η", "M", "D", "D/Δh", "test err", "noisy fit", "train loss",
                   "min feat", "D−λM", "binds", "conv", "start spread")
        cells = [(r["loss_label"], f"{r['expressivity']:g}", f"{r['eta']:.3g}", f"{r['memorization']:.3g}",
                  f"{r['dilation']:.3g}", f"{r['dilation_normalized']:.3g}", f"{r['test_error']:.3g}",
                  f"{r['noisy_fit']:.2g}", f"{r['training_loss']:.3g}", f"{r['min_feature']:.2g}",
                  f"{r['expressivity_slack']:.1e}", "yes" if r["constraint_binds"] else "no",
                  "✓" if r["converged"] else "✗", f"{r['start_spread']:.0e}") for r in rows]
        for table in _wrapped_tables(title, headers, cells, keys=3, width=console.width):
            console.print(table)
        for lam in sorted({r["expressivity"] for r in rows}):
            best = best_alpha_by_eta([r for r in rows if r["expressivity"] == lam])
            console.print(f"λ={lam:g} error-minimizing α by η: "
                          + ", ".join(f"η={e:.2f}→α={a:g} ({err:.3g})" for e, a, err in best))
        for lam in sorted({r["expressivity"] for r in rows}):
            sl = [x for x in dm_slopes(rows) if x["expressivity"] == lam]
            if sl:
                console.print(f"λ={lam:g} D-on-M slope across η (raw / normalized): "
                              + ", ".join(f"{x['loss_label']} {x['slope']:.3g} / {x['slope_normalized']:.3g}"
                                          for x in sl))
        console.print(f"rows: {out / 'rows.json'}")
        for f in figs:
            console.print(f"figure: {f}")
