"""Shared figure style: Okabe-Ito colour-blind-safe palette, Agg backend, tidy axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LOSS_COLORS = {"ce": "#D55E00", "ls": "#0072B2", "lr": "#009E73", "mse": "#E69F00", "focal": "#CC79A7"}


def class_color(c: int) -> str:
    return OKABE_ITO[c % len(OKABE_ITO)]


def apply_style() -> None:
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 130,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "legend.frameon": False,
            "font.size": 9,
        }
    )


def save(fig, path) -> None:
    """Write a figure atomically (temp + rename) and close it."""
    import io
    from pathlib import Path

    from nclab.store.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
