"""Typed, validated configuration base.

All nclab configs (training runs, sweep specs, theory problems) derive from
``StrictModel``: unknown keys are errors that name the closest valid key, values
are validated on assignment, and a model round-trips through YAML unchanged.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message a person can act on."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            aliases = {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known and key not in aliases:
                    hint = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
                    where = cls.__name__
                    msg = f"unknown key {key!r} in {where}"
                    msg += f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(sorted(known))}"
                    raise ConfigError(msg)
        return data


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``dotted.path: message``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{loc}: {e['msg']}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a clear error for a missing, unreadable or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level; got {type(data).__name__}")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Apply a CLI override ``a.b.c=value`` to a nested dict (creating levels)."""
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=0.1", "seed=3"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw))
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: ``over`` merged into ``base`` recursively."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
