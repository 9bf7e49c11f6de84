"""``nclab config list`` / ``nclab config show NAME``: the configs shipped inside the package."""

from __future__ import annotations

import typer

from nclab.cli._common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``config`` group to ``app``."""
    group = typer.Typer(help="Configs shipped with nclab: list them, print one to start from.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("list")
    def list_cmd() -> None:
        """List the shipped training configs and sweep specs."""
        from rich.table import Table

        from nclab.configs import list_configs

        table = Table(title="shipped configs (nclab config show NAME > my.yaml)", title_justify="left")
        table.add_column("name", style="cyan", overflow="fold")
        table.add_column("kind")
        table.add_column("description", overflow="fold")
        for c in list_configs():
            table.add_row(c.name, c.kind, c.summary)
        console.print(table)

    @group.command("show")
    def show_cmd(
        name: str = typer.Argument(..., help="a name from 'nclab config list', e.g. digits-binary"),
    ) -> None:
        """Print a shipped config's YAML (redirect it to a file to start your own)."""
        from nclab.configs import read_config

        try:
            text = read_config(name)
        except KeyError as exc:
            fail(str(exc.args[0]))
        # plain stdout, no Rich: the output is meant to be redirected into a YAML file
        typer.echo(text, nl=not text.endswith("\n"))
