"""Shared CLI helpers: a console, error reporting, metric tables."""

from __future__ import annotations

import math
from typing import Any, Iterable

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


# Exit codes of every nclab command (README: "Exit codes and faults").
EXIT_OK = 0  # done (also: stopped by --max-epochs)
EXIT_BUG = 1  # an unexpected error: a traceback, please report it
EXIT_INPUT = 2  # bad input: config, arguments, run directory, checkpoint, data file
EXIT_DIVERGED = 3  # training diverged (non-finite loss, parameters or logits)
EXIT_IO = 4  # the system refused: disk full, read-only or unwritable path, out of memory
EXIT_LOCKED = 5  # the run directory is in use by another live process
# 130 / 143: interrupted by SIGINT / SIGTERM after writing a checkpoint (resumable)


def os_error_message(exc: BaseException) -> str:
    """One line for an ``OSError``/``MemoryError`` that names the cause and the path."""
    import errno

    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'allocation failed'}; use a smaller model or batch"
    if not isinstance(exc, OSError):
        return str(exc)
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    cause = {
        errno.ENOSPC: "disk full (no space left on device)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a path component is not a directory",
        errno.EEXIST: "already exists",
    }.get(exc.errno)
    import os

    text = exc.strerror or str(exc)
    if cause:
        text = cause if exc.errno is not None and text == os.strerror(exc.errno) else f"{cause}: {text}"
    return f"{text}{where}"


def error_text(exc: BaseException, flags: dict[str, str] | None = None) -> str:
    """An error's message in command-line terms: a :class:`~nclab.config.TemplatedError` names the
    library options it is about by their flags (``flags``: keyword -> flag, e.g. ``{"resume":
    "--resume"}``); any other error reads as it is."""
    from nclab.config import TemplatedError

    if isinstance(exc, TemplatedError):
        return exc.render(flags)
    return str(exc)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4f}"
        return f"{v:.3e}"
    return str(v)


METRIC_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("NC1 · within-class variability", ("nc1", "nc1_pinv", "nc1_rank", "nc1_trace_ratio", "nc1_logits", "cdnv")),
    ("NC2 · frames", (
        "nc2_equinorm_means", "nc2_equinorm_weights", "nc2_equiangular_means", "nc2_equiangular_weights",
        "nc2_etf_error_means", "nc2_etf_error_weights", "nc2_orthogonal_error_means", "nc2_orthogonal_error_weights",
    )),
    ("NC3 · self-duality", ("nc3_papyan", "nc3_zhu")),
    ("NC4 · nearest class centre", ("nc4_ncc_mismatch", "nc4_ncc_mismatch_bias", "nc4_ncc_mismatch_nobias", "nc4_bias_norm")),
    ("Classifier", ("accuracy", "accuracy_clean", "ece")),
    ("Label noise", (
        "realized_noise_rate", "memorization", "memorization_std", "memorization_normalized", "dilation",
        "dilation_std", "dilation_std_official", "dilation_normalized", "clean_centroid_distance",
        "noisy_centroid_projection", "corruption_bias_mean",
    )),
]


def metric_table(values: dict, *, title: str, columns: Iterable[str] = ("value",), rows: list[dict] | None = None) -> Table:
    """A grouped table of metric keys; several result dicts make several columns."""
    cols = list(columns)
    results = rows if rows is not None else [values]
    table = Table(title=title, show_lines=False, title_justify="left")
    table.add_column("metric", style="cyan", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right")
    for group, keys in METRIC_GROUPS:
        present = [k for k in keys if any(r.get(k) is not None for r in results)]
        if not present:
            continue
        table.add_row(f"[bold]{group}[/]", *[""] * len(cols))
        for k in present:
            table.add_row(f"  {k}", *[fmt(r.get(k)) for r in results])
    return table
