"""``nclab train``: one training run from a YAML config plus ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


# library keyword options -> this command's flags (errors name the options they are about)
_FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "max_epochs": "--max-epochs"}


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    def train_cmd(
        config: Optional[Path] = typer.Argument(
            None, help="YAML config file, or the name of a shipped config (nclab config list); defaults fill missing keys."),
        set_: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. --set optim.lr=0.05 (repeatable)."),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory [default: runs/<name>]."),
        resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in the run directory."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run directory's nclab files first."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (nor plain progress lines when not on a terminal)."),
        max_epochs: Optional[int] = typer.Option(None, "--max-epochs", min=1, help="Stop after this epoch (resumable) [default: the config's epochs]."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads for this run (same as --set threads=N; part of the run's identity) [default: the config's threads, 1]."),
        log: list[str] = typer.Option([], "--log", help="Also log every record to tensorboard (RUN_DIR/tensorboard) or mlflow (MLFLOW_TRACKING_URI, else ./mlflow.db, one store for the runs of this directory); repeatable. metrics.jsonl (jsonl) is always written."),
    ) -> None:
        """Train one model under label noise; writes config, env, metrics.jsonl and checkpoints.

        Exit codes: 0 done (or stopped by --max-epochs), 2 bad input (config, run directory,
        checkpoint, data), 3 diverged (non-finite loss, parameters or logits; the last good
        checkpoint is kept), 4 disk full / unwritable / out of memory, 5 run directory in use by
        another process, 130/143 interrupted by SIGINT/SIGTERM (checkpoint written; --resume).
        """
        from rich.console import Console
        from rich.table import Table

        import torch

        from nclab.cli._common import EXIT_IO, EXIT_LOCKED, os_error_message
        from nclab.config import ConfigError
        from nclab.train import CheckpointError, TrainConfig, train
        from nclab.store.rundir import RunLockError

        from rich.markup import escape

        from nclab.cli._common import error_text
        from nclab.configs import resolve_config

        err = Console(stderr=True)
        if resume and overwrite:
            err.print("[bold red]error:[/] --resume and --overwrite exclude each other; choose one", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        try:
            if config is not None:
                config = resolve_config(config)
            cfg = TrainConfig.from_sources(config, list(set_) + ([f"threads={threads}"] if threads is not None else []))
            target = run_dir if run_dir is not None else Path("runs") / cfg.name
            from nclab.integrations.loggers import make_loggers

            loggers = make_loggers(log, run_dir=target, name=cfg.name, params=cfg.to_dict())
            result = train(cfg, run_dir=target, resume=resume, overwrite=overwrite, progress=not no_progress,
                           max_epochs=max_epochs, handle_signals=True, loggers=loggers)
        except RunLockError as exc:  # another live process holds the run directory
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_LOCKED) from None
        except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:  # user-fixable input
            err.print(f"[bold red]error:[/] {escape(error_text(exc, _FLAGS))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (OSError, MemoryError, torch.OutOfMemoryError) as exc:  # disk full, read-only, no memory
            err.print(f"[bold red]error:[/] {escape(os_error_message(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_IO) from None
        except KeyboardInterrupt:  # outside the epoch loop (data loading, a second signal at the very end)
            err.print("[bold red]interrupted[/]; a checkpoint written before the signal is kept "
                      "(--resume continues from it)", highlight=False)
            raise typer.Exit(130) from None
        out = Console()
        title = f"{cfg.name}: {result.status} at epoch {result.epoch}/{cfg.epochs}"
        table = Table(title=title, show_header=False, title_justify="left", min_width=min(len(title), 80))  # title on one line
        final = result.final or {}
        for key in ("test_acc", "train_acc_noisy", "train_acc_clean", "train.nc1", "train.memorization",
                    "train.dilation", "test.nc1"):
            value = final.get(key)
            table.add_row(key, "-" if value is None else f"{value:.4g}")
        table.add_row("run dir", str(result.run_dir))
        out.print(table)
        if result.status == "diverged":
            err.print(f"[bold red]{escape(result.message)}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(3)
        if result.status == "interrupted":
            import shlex

            cmd = ["nclab", "train", *([str(config)] if config is not None else [])]
            for item in set_:
                cmd += ["--set", item]
            cmd += ["--threads", str(threads)] if threads is not None else []
            cmd += ["--run-dir", str(target), "--resume"]
            err.print(escape(result.message), highlight=False, soft_wrap=True)
            err.print(f"resume with: {escape(shlex.join(cmd))}", highlight=False, soft_wrap=True)  # one line
            raise typer.Exit(128 + (result.signum or 2))
        if result.message:
            out.print(result.message, highlight=False)
