"""The ``nclab`` command line: a thin typer layer over the library (nothing imports it)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import typer

app = typer.Typer(
    name="nclab",
    help="Neural collapse under label noise: metrics, training, theory, sweeps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from nclab import __version__

        typer.echo(f"nclab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the nclab version and exit."),
) -> None:
    """Neural collapse under label noise: metrics, training, theory, sweeps."""


# Each command group lives in its own module with ``register(app)``.
_GROUPS: tuple[str, ...] = ("metrics", "train", "demo", "sweep", "theory", "analyze", "detect", "config", "plot")


def _escape(text: str) -> str:
    """Escape Rich markup: help strings here are plain text, and typer's Rich renderer would
    otherwise swallow e.g. ``[default: runs/<name>]`` as a style tag."""
    from rich.markup import escape

    return escape(text)


def _escape_param_infos(func: Any) -> None:
    from typer.models import ParameterInfo

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    for p in sig.parameters.values():
        infos = [p.default] + list(getattr(p.annotation, "__metadata__", ()))
        for info in infos:
            if isinstance(info, ParameterInfo) and not getattr(info, "_nclab_escaped", False):
                if info.help:
                    info.help = _escape(info.help)
                info._nclab_escaped = True  # the infos are shared module objects: escape once


def escape_help(typer_app: typer.Typer) -> None:
    """Escape Rich markup in every command, group and parameter help of ``typer_app`` (idempotent)."""
    for cmd in typer_app.registered_commands:
        if not getattr(cmd, "_nclab_escaped", False):
            doc = cmd.help if cmd.help is not None else inspect.getdoc(cmd.callback)
            if doc:
                cmd.help = _escape(doc)
            cmd._nclab_escaped = True
        _escape_param_infos(cmd.callback)
    for grp in typer_app.registered_groups:
        sub = grp.typer_instance
        if sub is not None:
            if isinstance(sub.info.help, str) and not getattr(sub, "_nclab_escaped", False):
                sub.info.help = _escape(sub.info.help)
                sub._nclab_escaped = True
            escape_help(sub)
            if sub.registered_callback is not None:
                _escape_param_infos(sub.registered_callback.callback)
    if typer_app.registered_callback is not None:
        _escape_param_infos(typer_app.registered_callback.callback)


def _register_all() -> None:
    from nclab.cli._help import fix_help_rendering

    fix_help_rendering()
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for name in _GROUPS:
        if name in names:  # registering twice (tests call this repeatedly) would duplicate commands
            continue
        importlib.import_module(f"nclab.cli.{name}").register(app)
    escape_help(app)


def main() -> None:
    _register_all()
    app(prog_name="nclab")
