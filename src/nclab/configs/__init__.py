"""Configs shipped inside the package: starting points for ``nclab train`` and ``nclab sweep``.

Names are file paths relative to this folder without ``.yaml``: ``digits-binary``,
``paper-mlp`` (training configs) and ``sweeps/digits-md``, ``sweeps/digits-lr-random``
(sweep specs). ``nclab config list`` lists them, ``nclab config show NAME`` prints one, and
``nclab train NAME`` trains from one (a path to an existing file always wins over a name).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["ShippedConfig", "list_configs", "config_path", "read_config", "resolve_config"]

_SUFFIX = ".yaml"


class ShippedConfig:
    """One shipped YAML file: ``name``, ``kind`` (``"train"`` or ``"sweep"``), first comment line."""

    __slots__ = ("name", "kind", "path", "summary")

    def __init__(self, name: str, kind: str, path: Path, summary: str):
        self.name, self.kind, self.path, self.summary = name, kind, path, summary

    def __repr__(self) -> str:
        return f"ShippedConfig({self.name!r}, kind={self.kind!r})"


def _root() -> Path:
    # A regular (not zipped) package: setuptools installs package data as files.
    return Path(str(resources.files(__name__)))


def _summary(path: Path) -> str:
    """The file's leading comment up to its first full stop (the description shown by ``list``)."""
    parts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        parts.append(s.lstrip("#").strip())
        if parts[-1].endswith("."):
            break
    return " ".join(parts)


def list_configs() -> list[ShippedConfig]:
    """Every shipped config, training configs first, each group sorted by name."""
    root = _root()
    out = []
    for path in sorted(root.rglob(f"*{_SUFFIX}")):
        name = path.relative_to(root).with_suffix("").as_posix()
        kind = "sweep" if name.startswith("sweeps/") else "train"
        out.append(ShippedConfig(name, kind, path, _summary(path)))
    return sorted(out, key=lambda c: (c.kind != "train", c.name))


def config_path(name: str) -> Path:
    """The file of the shipped config ``name`` (``.yaml`` optional); ``KeyError`` naming the
    available ones when there is none."""
    key = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    known = {c.name: c.path for c in list_configs()}
    if key not in known:
        raise KeyError(f"no shipped config named {name!r}; available: {', '.join(known)}")
    return known[key]


def read_config(name: str) -> str:
    """The YAML text of the shipped config ``name``."""
    return config_path(name).read_text(encoding="utf-8")


def resolve_config(name_or_path: str | Path) -> Path:
    """An existing file as given, else the shipped config of that name.

    Raises ``FileNotFoundError`` naming both readings when neither exists.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    try:
        return config_path(str(name_or_path))
    except KeyError:
        names = ", ".join(c.name for c in list_configs())
        raise FileNotFoundError(
            f"{name_or_path}: no such file, and no shipped config of that name (shipped: {names})"
        ) from None
