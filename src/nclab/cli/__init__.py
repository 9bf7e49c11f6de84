"""The ``nclab`` command line: a thin typer layer over the library (nothing imports it)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="nclab",
    help="Neural collapse under label noise: metrics, training, theory, sweeps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Neural collapse under label noise: metrics, training, theory, sweeps."""


# Each command group lives in its own module with ``register(app)``.
_GROUPS: tuple[str, ...] = ("metrics", "train", "demo", "sweep", "theory", "analyze", "detect")


def _register_all() -> None:
    for name in _GROUPS:
        importlib.import_module(f"nclab.cli.{name}").register(app)


def main() -> None:
    _register_all()
    app()
