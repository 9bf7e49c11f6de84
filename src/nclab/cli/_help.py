"""Help rendering in click's customs, whatever typer's defaults: boolean flags show no
``<bool>`` value (``--resume``, not ``--resume <bool>``, which invites ``--resume true``),
and the usage line names arguments as ``SPEC_PATH`` / ``[RUN_DIR]``, not ``{spec_path}``."""

from __future__ import annotations

from typing import Any


def fix_help_rendering() -> None:
    """Adjust typer's parameter classes once (idempotent; a no-op on typer versions without
    these hooks, whose help already follows click)."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - other typer layouts
        return
    if getattr(TyperOption, "_nclab_help", False):
        return
    if hasattr(TyperOption, "display_type_rich"):
        shown = TyperOption.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if getattr(self, "is_flag", False) else shown(self, ctx)

        TyperOption.display_type_rich = display_type_rich
    if hasattr(TyperArgument, "_usage_display_name"):

        def usage_name(self: Any) -> str:
            name = str(self.metavar or self.name).upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name
    TyperOption._nclab_help = True
