"""``nclab detect``: rank a run's training samples by how likely their label is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nclab.cli._common import console, fail, fmt


def register(app: typer.Typer) -> None:
    """Add the ``detect`` command to ``app``."""

    @app.command("detect")
    def detect_cmd(
        run_dir: Path = typer.Argument(..., help="an nclab run directory"),
        out: Optional[Path] = typer.Option(None, "--out", help="CSV to write [default: RUN_DIR/suspicion-<score>.csv]"),
        score: str = typer.Option("auto", "--score", help="features | knn | dynamics | fit_epoch | combined | auto "
                                  "(auto: dynamics, i.e. AUM, when the run recorded dynamics, else features; "
                                  "feature scores fade once the network has memorized the noisy labels)"),
        k: int = typer.Option(10, "--k", help="neighbours for the knn score"),
        top: int = typer.Option(10, "--top", help="print this many most suspicious samples"),
        device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda"),
    ) -> None:
        """Suspicion scores (no clean labels used) for every training sample, written as CSV."""
        from rich.table import Table

        from nclab.config import ConfigError
        from nclab.detect import SCORES, score_run
        from nclab.train import CheckpointError
        from nclab.store.dynamics import DynamicsRecorder

        if out is not None and out.is_dir():
            fail(f"--out {out} is a directory; give the path of the CSV file to write")
        if out is not None and out.parent.exists() and not out.parent.is_dir():
            fail(f"--out {out}: its folder {out.parent} is a file")
        if not run_dir.is_dir():
            fail(f"{run_dir} is not a directory: give an nclab run directory")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                fail(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
        if score == "auto":
            score = "dynamics" if DynamicsRecorder(run_dir).epochs() else "features"
        elif score not in SCORES:
            fail(f"unknown --score {score!r}; valid: auto, {', '.join(SCORES)}")
        from nclab.cli._common import EXIT_IO, EXIT_LOCKED, os_error_message
        from nclab.store.rundir import RunDirError, RunLock, RunLockError

        lock = None
        if out is None:  # the CSV goes into the run directory: not while a trainer writes there
            try:
                lock = RunLock(run_dir, what="detect").acquire()
            except RunLockError as exc:
                fail(str(exc), EXIT_LOCKED)
            except RunDirError as exc:
                fail(f"{exc}; write the CSV elsewhere with --out", EXIT_IO)
        try:
            try:
                sus = score_run(run_dir, score=score, k=k, device=device)
            except (ConfigError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
                fail(str(exc))
            target = out if out is not None else run_dir / f"suspicion-{score}.csv"
            try:
                path = sus.to_csv(target)
            except OSError as exc:  # unwritable folder, read-only run dir, disk full
                fail(f"cannot write {target}: {os_error_message(exc)}", EXIT_IO)
        finally:
            if lock is not None:
                lock.release()
        console.print(f"[bold]{run_dir.name}[/]: {len(sus.score)} training samples scored by [cyan]{score}[/] "
                      f"({SCORES[score]})", highlight=False)
        q = sus.quality()
        if q is not None and q["auroc"] is not None:
            console.print(f"against the injected noise ({q['n_mislabeled']} mislabeled): AUROC {q['auroc']:.4f}, "
                          f"precision@{q['n_mislabeled']} {q['precision_at_k']:.4f}, "
                          f"average precision {q['average_precision']:.4f}", highlight=False)
        fq = sus.flagged_quality()
        if fq is not None:
            rule = "AUM < 0 (mean margin over the epochs)" if fq["rule"] == "aum" else \
                "closer to another class's mean than to its own (features)"
            line = f"flagged {fq['flagged']} of {len(sus.score)} by {rule}"
            if fq.get("precision") is not None:
                rec = fq.get("recall")
                line += f": precision {fq['precision']:.4f}" + (f", recall {rec:.4f}" if rec is not None else "")
            console.print(line + " (CSV column flagged)", highlight=False)
        if top > 0:
            t = Table(title=f"top {top}", title_justify="left")
            cols = ["rank", "index", "given", "score"] + (["clean", "mislabeled"] if sus.clean is not None else [])
            for c in cols:
                t.add_column(c, justify="right")
            rank = sus.rank
            for i in sorted(range(len(rank)), key=lambda j: rank[j])[:top]:
                row = [str(rank[i]), str(int(sus.index[i])), str(int(sus.given[i])), fmt(float(sus.score[i]))]
                if sus.clean is not None:
                    row += [str(int(sus.clean[i])), "yes" if sus.is_mislabeled[i] else "no"]
                t.add_row(*row)
            console.print(t)
        console.print(f"wrote {path}", highlight=False)
