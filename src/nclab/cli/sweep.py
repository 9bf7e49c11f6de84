"""``nclab sweep``, ``nclab search``, ``nclab reproduce``, ``nclab report``, ``nclab store``:
the thin command-line layer over :mod:`nclab.sweep`, :mod:`nclab.store.index` and
:mod:`nclab.report` (parsing, rich progress, printing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["register", "SweepProgress"]


class SweepProgress:
    """Rich progress for a sweep: done/total bar, running, failed, ETA from this session's
    mean run time and the number of runs in flight. Use as ``on_event`` callback."""

    def __init__(self, *, title: str, enabled: bool = True):
        from rich.console import Console  # noqa: PLC0415

        self.enabled = enabled
        self.title = title
        self.console = Console(stderr=True)
        self._progress = None
        self._task = None
        self._durations: list[float] = []
        self._t0 = time.time()
        self._plain = enabled and not self.console.is_terminal  # logs, batch jobs: one line per finished run
        self._last_line = 0.0

    def __call__(self, ev: Any) -> None:
        c = ev.counts
        if ev.kind == "completed" and ev.duration is not None:
            self._durations.append(ev.duration)
        if ev.kind == "failed":
            last = (ev.error or "").strip().splitlines()[-1:] or ["?"]
            self.console.print(f"[red]failed[/red] {ev.name}: {last[0]}")
        if ev.kind == "locked":
            self.console.print(f"[yellow]skipped[/yellow] {ev.name}: {ev.error}", highlight=False)
        if not self.enabled:
            return
        if self._plain:
            if ev.kind in ("completed", "failed", "end") or (ev.kind == "tick" and time.time() - self._last_line > 60):
                self._last_line = time.time()
                self.console.print(f"{self.title}: {c['done']}/{c['total']} done, {c['failed']} failed, "
                                   f"{c['running']} running, elapsed {_fmt_seconds(time.time() - self._t0)}, "
                                   f"ETA {self._eta(c)}", highlight=False)
            return
        if ev.kind == "start":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("running {task.fields[running]}  failed {task.fields[failed]}  ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=c["total"], completed=c["done"],
                                                 running=0, failed=c["failed"], eta="?")
            return
        if self._progress is None:
            return
        eta = self._eta(c)
        self._progress.update(self._task, completed=c["done"], running=c["running"], failed=c["failed"], eta=eta)
        if ev.kind == "end":
            self._progress.stop()


    def _eta(self, c: dict) -> str:
        # from this session's throughput (runs finished per second), which also holds for stacks
        # whose members finish together
        remaining = c["total"] - c["done"] - c["failed"]
        if remaining <= 0:
            return "0s"
        if not self._durations:
            return "?"
        rate = len(self._durations) / max(1e-9, time.time() - self._t0)
        return _fmt_seconds(remaining / rate)


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


_FLAGS = {"workers": "--workers", "num_cpus": "--num-cpus", "num_gpus": "--num-gpus", "ray_address": "--ray-address",
          "retry_failed": "--retry-failed", "study_name": "--study-name", "stack": "--stack", "sampler": "--sampler",
          "trials": "--trials"}


def _fail(msg: str | BaseException, code: int = 2) -> None:
    """One line and exit ``code``; an error names the library options it is about by their flags."""
    from nclab.cli._common import error_text  # noqa: PLC0415

    text = error_text(msg, _FLAGS) if isinstance(msg, BaseException) else msg
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _open_store(root: Path, **kw: Any) -> Any:
    """``RunStore(root, **kw)`` or a one-line error: 2 for a missing/corrupt store, 4 for I/O."""
    from nclab.cli._common import EXIT_IO, os_error_message  # noqa: PLC0415
    from nclab.store.index import RunStore  # noqa: PLC0415

    try:
        return RunStore(root, **kw)
    except (FileNotFoundError, RuntimeError) as exc:  # StoreError carries its exit code (2 corrupt, 4 disk full)
        _fail(exc, getattr(exc, "exit_code", 2))
    except OSError as exc:
        _fail(f"results store {root}: {os_error_message(exc)}", EXIT_IO)


def _io_fail(exc: BaseException, what: str) -> None:
    """A disk-full / read-only / unwritable failure (exit 4) as one line."""
    from nclab.cli._common import EXIT_IO, os_error_message  # noqa: PLC0415

    _fail(f"{what}: {os_error_message(exc)}", EXIT_IO)


def _exit_for_signal_or_lock(summary: Any, what: str) -> None:
    """Report interrupted and locked runs; exit 130/143 when a signal stopped the sweep."""
    locked = getattr(summary, "locked", 0)
    if locked:
        typer.echo(f"{locked} runs skipped: their run directories are locked by another live process "
                   "(left pending; rerun when it has finished)", err=True)
    signum = getattr(summary, "signum", None)
    if signum:
        import signal  # noqa: PLC0415

        typer.echo(f"{what} interrupted by {signal.Signals(signum).name}: {summary.interrupted} runs stopped after "
                   "their current epoch with a checkpoint and were released; rerun the same command to continue",
                   err=True)
        raise typer.Exit(128 + signum)


def _print_summary(summary: Any, store: Any) -> None:
    typer.echo(
        f"{summary.total} runs: {summary.completed} completed now, {summary.already_done} already done, "
        f"{summary.diverged + summary.already_diverged} diverged, "
        f"{summary.failed} failed now, {summary.skipped_failed} failed earlier (not retried), "
        f"{summary.elsewhere} running in another sweep; {summary.reclaimed} reclaimed from dead sweeps; "
        f"wall {summary.wall:.1f}s"
    )
    typer.echo(f"store: {store.root} ({store.db_path.name})")


def _with_loggers(fn: Any, log: list[str], *, run_fn: Optional[str], store_root: Path, experiment: str) -> Any:
    """The trainer with ``--log`` bound (a picklable partial); one MLflow store for the sweep,
    its tables and experiment created here so parallel runs do not race to create them."""
    import functools  # noqa: PLC0415

    from nclab.integrations.loggers import LOGGER_NAMES, MLflowLogger, make_loggers  # noqa: PLC0415
    from nclab.sweep.trainer import train_run  # noqa: PLC0415

    if run_fn is not None:
        raise ValueError("--log works with the built-in trainer only, not with --run-fn")
    make_loggers(log, run_dir=store_root)  # validates the names and that the engines are installed
    names = tuple(n.strip().lower() for n in log if n.strip().lower() in LOGGER_NAMES)
    uri = None
    if "mlflow" in names:
        import os  # noqa: PLC0415

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root.resolve() / 'mlflow.db'}"
        MLflowLogger(tracking_uri=uri, experiment=experiment).experiment_id()
    return functools.partial(train_run, log=names, mlflow_uri=uri, experiment=experiment)


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``search``, ``reproduce``, ``report`` and ``store-export`` to ``app``."""

    @app.command("sweep")
    def sweep_cmd(
        spec_path: Path = typer.Argument(..., help="sweep spec YAML (base, grid, random, seeds), or a shipped name such as sweeps/digits-md (nclab config list)"),
        store_dir: Optional[Path] = typer.Option(None, "--store", help="results store directory [default: sweeps/<spec name>]"),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel runs [default: CPU count]"),
        executor: str = typer.Option("local", "--executor", help="local | ray | inline"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local runtime)"),
        num_cpus: float = typer.Option(1.0, "--num-cpus", help="Ray: CPUs per run"),
        num_gpus: float = typer.Option(0.0, "--num-gpus", help="Ray: GPUs per run"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="re-run runs that failed before"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and exit"),
        run_fn: Optional[str] = typer.Option(
            None, "--run-fn", hidden=True,
            help="module:function to call instead of the trainer (configs are then not validated by TrainConfig)",
        ),
        log: list[str] = typer.Option([], "--log", help="also log every run to tensorboard (RUN_DIR/tensorboard) or mlflow (MLFLOW_TRACKING_URI, else STORE/mlflow.db, experiment = sweep name); repeatable"),
        stack: int = typer.Option(1, "--stack", help="train up to this many compatible runs (same model and data shape) as one stacked model per worker; 1 = one run at a time"),
    ) -> None:
        """Run every config of a sweep spec once; resumable (kill and rerun) and safe to run twice."""
        from nclab.config import ConfigError  # noqa: PLC0415
        from nclab.sweep import expand, load_spec, make_executor, resolve_run_fn, run_sweep  # noqa: PLC0415

        from nclab.configs import resolve_config  # noqa: PLC0415

        try:
            spec, base = load_spec(resolve_config(spec_path))
            runs = expand(spec, base=base, resolve=None if run_fn else "auto")
            fn = resolve_run_fn(run_fn)
        except (ConfigError, ValueError, ImportError, FileNotFoundError) as exc:
            _fail(exc)
        if dry_run:
            for r in runs:
                typer.echo(f"{r.hash}  {r.name}  " + " ".join(f"{k}={v}" for k, v in r.varied.items()))
            typer.echo(f"{len(runs)} runs")
            return
        store = _open_store(store_dir or Path("sweeps") / spec.name)
        if log:
            try:
                fn = _with_loggers(fn, log, run_fn=run_fn, store_root=Path(store.root), experiment=spec.name)
            except ValueError as exc:
                _fail(exc)
        try:
            ex = make_executor(executor, workers=workers, ray_address=ray_address, num_cpus=num_cpus, num_gpus=num_gpus)
        except (RuntimeError, ValueError) as exc:
            _fail(exc)
        prog = SweepProgress(title=spec.name, enabled=not no_progress)
        import sqlite3  # noqa: PLC0415

        from nclab.store.index import StoreError  # noqa: PLC0415
        from nclab.train.signals import StopSignals  # noqa: PLC0415

        try:
            # SIGINT/SIGTERM: runs stop after their epoch with a checkpoint, rows are released, exit 130/143
            with StopSignals(enabled=True) as sig, ex:
                summary = run_sweep(store, runs, run_fn=fn, executor=ex, sweep=spec.name, retry_failed=retry_failed,
                                    on_event=prog, stack=stack, signals=sig)
        except StoreError as exc:  # corrupt store (2), disk full or read-only (4)
            _fail(exc, exc.exit_code)
        except ConfigError as exc:  # a bad option (--stack 0)
            _fail(exc)
        except (OSError, sqlite3.OperationalError) as exc:  # disk full, read-only store
            _io_fail(exc, f"sweep {spec.name} (store {store.root})")
        except KeyboardInterrupt:  # a second signal: workers stopped at once, the last checkpoints kept
            typer.echo(f"sweep {spec.name} stopped at once; its runs were released: rerun the same command to "
                       "continue from their last checkpoints", err=True)
            raise typer.Exit(128 + (sig.signum or 2)) from None
        _print_summary(summary, store)
        _exit_for_signal_or_lock(summary, f"sweep {spec.name}")
        if summary.failed or summary.skipped_failed:
            raise typer.Exit(1)

    @app.command("store-export")
    def export_cmd(
        store_dir: Path = typer.Argument(..., help="results store directory"),
        out: Path = typer.Option(..., "--out", "-o", help="output file (.csv or .parquet)"),
        status: str = typer.Option("completed", "--status", help="completed | failed | pending | running | all"),
        sweep: Optional[str] = typer.Option(None, "--sweep", help="only this sweep's runs [default: every sweep]"),
    ) -> None:
        """Export the run table (config.* and final.* columns) to CSV or Parquet."""
        store = _open_store(store_dir, create=False)  # read-only when the store cannot be written
        st = None if status == "all" else status
        try:
            if out.suffix == ".parquet":
                n = store.export_parquet(out, status=st, sweep=sweep)
            elif out.suffix == ".csv":
                n = store.export_csv(out, status=st, sweep=sweep)
            else:
                _fail(f"--out must end in .csv or .parquet; got {out.name}")
        except (RuntimeError, ValueError) as exc:  # StoreError carries its exit code
            _fail(exc, getattr(exc, "exit_code", 2))
        except OSError as exc:
            _io_fail(exc, f"cannot write {out}")
        typer.echo(f"wrote {n} runs to {out}")

    _register_search(app)
    _register_study(app)


def _register_search(app: typer.Typer) -> None:
    @app.command("search")
    def search_cmd(
        config: Path = typer.Argument(..., help="base training config YAML, or a shipped name such as digits-binary (nclab config list)"),
        store_dir: Path = typer.Option(..., "--store", help="results store directory (holds optuna.sqlite too)"),
        preset: str = typer.Option("paper", "--preset", help="search preset (paper)"),
        trials: Optional[int] = typer.Option(None, "--trials", help="number of trials [preset: 20]"),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="random | tpe [preset: random]"),
        seed: int = typer.Option(0, "--seed", help="sampler seed"),
        storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL [default: sqlite:///STORE/optuna.sqlite]"),
        study_name: Optional[str] = typer.Option(None, "--study-name", help="Optuna study name [default: from the config hash]"),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel runs [default: CPU count]"),
        executor: str = typer.Option("local", "--executor", help="local | ray | inline"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local runtime)"),
        no_retrain: bool = typer.Option(False, "--no-retrain", help="skip retraining the best trial on all data"),
        run_fn: Optional[str] = typer.Option(None, "--run-fn", hidden=True),
    ) -> None:
        """Hyperparameter search (Optuna ask-and-tell over our executors); resumable."""
        from nclab.config import ConfigError, load_yaml  # noqa: PLC0415
        from nclab.sweep import make_executor, resolve_run_fn  # noqa: PLC0415
        from nclab.configs import resolve_config  # noqa: PLC0415
        from nclab.sweep.search import get_preset, run_search  # noqa: PLC0415
        from nclab.config import resolve_config_paths  # noqa: PLC0415

        try:
            path = resolve_config(config)
            base = resolve_config_paths(load_yaml(path), path.parent)
            pre = get_preset(preset)
            fn = resolve_run_fn(run_fn)
        except (ConfigError, ValueError, ImportError, FileNotFoundError) as exc:
            _fail(exc)
        store = _open_store(store_dir)
        try:
            ex = make_executor(executor, workers=workers, ray_address=ray_address)
        except (RuntimeError, ValueError) as exc:  # bad --workers, Ray missing
            _fail(exc)

        def trial_line(t: dict) -> None:
            # one plain line per finished trial: progress that also reads well in a log file
            value = "failed" if t["value"] is None else f"{t['value']:.4g}"
            best = "-" if t["best"] is None else f"{t['best']:.4g}"
            params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
            typer.echo(f"trial {t['number']} ({t['finished']}/{t['total']} finished): {t['metric']} {value}  "
                       f"best {best}  {params}")

        typer.echo(f"search {pre.name}: {trials or pre.trials} trials, score {pre.metric} ({pre.direction})")
        from nclab.store.index import StoreError  # noqa: PLC0415

        try:
            with ex:
                res = run_search(
                    base, store=store, preset=pre, trials=trials, sampler=sampler, seed=seed, storage=storage,
                    study_name=study_name, executor=ex, run_fn=fn, retrain=not no_retrain,
                    resolve=None if run_fn else "auto", on_trial=trial_line,
                )
        except StoreError as exc:  # corrupt store (2), disk full or read-only (4)
            _fail(exc, exc.exit_code)
        except ConfigError as exc:  # a bad option (--sampler bogus) or base config
            _fail(exc)
        typer.echo(res.describe())


def _register_study(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce_cmd(
        study: str = typer.Argument(..., help="which study: memorization-dilation"),
        scale: str = typer.Option("small", "--scale", help="small (CPU, 280 runs in CE/LS seed pairs, every run to the end of its schedule) | paper (GPU, the official protocol)"),
        search: str = typer.Option("per-run", "--search", help="paper scale: per-run (the official code: one search per dataset, loss, rate and seed) | per-cell (one search per dataset, loss and rate on seed 0, cheaper)"),
        datasets: Optional[list[str]] = typer.Option(None, "--datasets", help="datasets to use [default: every one available locally]"),
        store_dir: Path = typer.Option(Path("studies/memorization-dilation"), "--store", help="results store directory"),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where mnist/cifar10/svhn files live [default: the standard locations, e.g. $NCLAB_DATA]"),
        seeds: Optional[int] = typer.Option(None, "--seeds", help="number of paired seeds per cell [small: 10, paper: 10]"),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel runs [default: CPU count]"),
        executor: str = typer.Option("local", "--executor", help="local | ray | inline"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local runtime)"),
        num_gpus: float = typer.Option(0.0, "--num-gpus", help="Ray: GPUs per run"),
        device: Optional[str] = typer.Option(None, "--device", help="training device [small: cpu, paper: auto]"),
        tiny: bool = typer.Option(False, "--tiny", hidden=True, help="a minutes-long smoke version of --scale small"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="re-run runs that failed before"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
        no_report: bool = typer.Option(False, "--no-report", help="do not write the report at the end"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and exit (the data are not looked for)"),
        as_json: bool = typer.Option(False, "--json", help="with --dry-run: print the resolved run configs as JSON"),
        stack: int = typer.Option(8, "--stack", help="train up to this many compatible runs as one stacked model per worker (1 = one at a time)"),
    ) -> None:
        """Regenerate the memorization-dilation study: runs (resumable) then the report."""
        from nclab.sweep import make_executor  # noqa: PLC0415
        from nclab.sweep.study import STUDIES, plan_study, run_study  # noqa: PLC0415

        if study not in STUDIES:
            _fail(f"unknown study {study!r}; available: {', '.join(STUDIES)}")
        try:
            plan = plan_study(scale=scale, datasets=datasets, data_dir=data_dir, seeds=seeds, device=device, tiny=tiny,
                              check_data=not dry_run, search=search)
        except (ValueError, FileNotFoundError) as exc:
            _fail(exc)
        if dry_run and as_json:
            import json  # noqa: PLC0415

            typer.echo(json.dumps(plan.to_json(), indent=1))
            return
        typer.echo(plan.describe())
        if dry_run:
            for r in plan.runs():
                c = r.config
                typer.echo(f"{r.hash}  dataset={c['dataset']['name']} classes={c['dataset']['classes']} "
                           f"noise.kind={c['noise']['kind']} noise.rate={c['noise']['rate']:g} loss={c['loss']['name']} "
                           f"seed={c['seed']} epochs={c['epochs']} terminal_acc={c.get('terminal_acc')}")
            return
        store = _open_store(store_dir)
        try:
            ex = make_executor(executor, workers=workers, ray_address=ray_address, num_gpus=num_gpus)
        except (RuntimeError, ValueError) as exc:  # bad --workers, Ray missing
            _fail(exc)
        prog = SweepProgress(title=f"{study} ({scale})", enabled=not no_progress)
        from nclab.store.index import StoreError  # noqa: PLC0415

        try:
            with ex:
                summary = run_study(plan, store=store, executor=ex, on_event=prog, retry_failed=retry_failed,
                                    stack=stack)
        except StoreError as exc:  # corrupt store (2), disk full or read-only (4)
            _fail(exc, exc.exit_code)
        _print_summary(summary, store)
        if not no_report:
            from nclab.report import build_report  # noqa: PLC0415

            rep = build_report(store_dir)
            typer.echo(f"report: {rep.markdown}  {rep.html}")

    @app.command("report")
    def report_cmd(
        source: Path = typer.Argument(..., help="a results store directory, or a study's runs.csv"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory [default: STORE/report, or the folder of runs.csv]"),
        as_json: bool = typer.Option(False, "--json", help="print the claims, verdicts and run counts as JSON (claims.json); with a runs.csv and no --out nothing is written"),
    ) -> None:
        """Rebuild a report without training: a study store or its runs.csv gives the study report (claims.json,
        report.md, figures); any other store the sweep report (per-group tables and curves)."""
        from nclab.report import build_report  # noqa: PLC0415

        write = not (as_json and out is None and source.suffix == ".csv")
        try:
            rep = build_report(source, out_dir=out, write=write)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: StoreError (corrupt store)
            _fail(exc, getattr(exc, "exit_code", 2))
        except OSError as exc:
            _io_fail(exc, "cannot write the report (a read-only store needs --out elsewhere)")
        if as_json:
            import json  # noqa: PLC0415

            typer.echo(json.dumps(rep.summary, indent=1, default=str))
            return
        typer.echo(f"report: {rep.markdown}\nhtml:   {rep.html}\nfigures: {len(rep.figures)}")
        for line in rep.verdicts:
            typer.echo(f"  {line}")
