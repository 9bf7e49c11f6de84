"""Epoch progress of the runs a trainer holds (one or a stack), or nothing when disabled."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

__all__ = ["Progress"]


class Progress:
    """One line per run. On a terminal (or in Jupyter): a rich bar per run on stderr.
    Otherwise (``nclab train cfg > log 2>&1``, batch jobs) a rich bar would print nothing
    until the end, so plain lines go to stderr instead: per run the first epoch, then at most
    one every ``NCLAB_PROGRESS_SECONDS`` seconds (default 10; 0 = every epoch), and the last
    epoch reached.

    ``runs``: ``(name, total_epochs, start_epoch)`` per run; :meth:`update` takes the run's index.
    """

    def __init__(self, enabled: bool, runs: Sequence[tuple[str, int, int]]):
        self.bar = None
        self.plain = False
        self.runs = list(runs)
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal or console.is_jupyter:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(TextColumn("[bold]{task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.description}"), TimeElapsedColumn(), console=console)
            self.bar.start()
            self.tasks = [self.bar.add_task("", total=total, completed=start, name=name)
                          for name, total, start in self.runs]
            return
        try:
            self.interval = max(0.0, float(os.environ.get("NCLAB_PROGRESS_SECONDS", "10")))
        except ValueError:
            self.interval = 10.0
        self.plain = True
        self.t0 = time.monotonic()
        self.last_time: list[float | None] = [None] * len(self.runs)
        self.pending: list[str | None] = [None] * len(self.runs)

    @staticmethod
    def _describe(record: dict[str, Any] | None, loss: float) -> str:
        desc = f"loss {loss:.4f}"
        if record is not None:
            nc1 = record.get("train.nc1")
            desc += f"  acc {record['train_acc_noisy']:.3f}  test {record['test_acc']:.3f}"
            desc += f"  NC1 {nc1:.3g}" if isinstance(nc1, float) else "  NC1 -"
        return desc

    def _emit(self, k: int, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self.last_time[k], self.pending[k] = time.monotonic(), None

    def update(self, k: int, epoch: int, record: dict[str, Any] | None, loss: float) -> None:
        """Run ``k`` finished ``epoch`` (``record``: its evaluation record, if any)."""
        if self.plain:
            name, total, _ = self.runs[k]
            now = time.monotonic()
            line = f"{name}: epoch {epoch}/{total}  {self._describe(record, loss)}  elapsed {now - self.t0:.1f}s"
            last = self.last_time[k]
            if last is None or epoch == total or now - last >= self.interval:
                self._emit(k, line)
            else:
                self.pending[k] = line
            return
        if self.bar is not None:
            self.bar.update(self.tasks[k], completed=epoch, description=self._describe(record, loss))

    def close(self) -> None:
        if self.plain:
            for k, line in enumerate(self.pending):
                if line is not None:
                    self._emit(k, line)  # where the run stopped (max_epochs, divergence, interrupt)
        if self.bar is not None:
            self.bar.stop()
