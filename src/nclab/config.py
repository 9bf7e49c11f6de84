"""Typed, validated configuration base.

All nclab configs (training runs, sweep specs, theory problems) derive from
``StrictModel``: unknown keys are errors that name the closest valid key, values
are validated on assignment, and a model round-trips through YAML unchanged.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class TemplatedError(Exception):
    """Base of errors whose message may name keyword options of a library call (``resume``,
    ``max_epochs``): the message is a template whose ``{option}`` fields are listed in
    ``options`` (``values`` fill any other fields). ``str()`` reads with the keyword names; a
    front end says them in its own words with :meth:`render` (the CLI: ``--resume``), so no
    one rewrites message text. ``field`` is the dotted key of the offending value
    (``"optim.lr"``) when one value or option is at fault, else ``None``."""

    def __init__(self, message: str, *, field: str | None = None, options: tuple[str, ...] = (), **values: Any):
        self.template, self.options, self.values = message, tuple(options), values
        super().__init__(self.render())
        self.field = field if field is not None else (self.options[0] if len(self.options) == 1 else None)

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message, each option called ``names.get(option, option)``."""
        if not self.options and not self.values:
            return self.template
        names = names or {}
        return self.template.format(**self.values, **{o: names.get(o, o) for o in self.options})


class ConfigError(TemplatedError, ValueError):
    """A configuration that cannot be used, with a message a person can act on (``field``,
    ``options`` and :meth:`render`: see :class:`TemplatedError`)."""


class OptionError(ConfigError):
    """A bad keyword option of a library call (``workers``, ``stack``, ``max_epochs``...); see
    :class:`ConfigError` for ``options`` and :meth:`~ConfigError.render`."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def safe_name(value: Any, *, what: str = "name") -> str:
    """A name that is used as one path component (``runs/<name>``, ``sweeps/<name>``).

    Letters, digits and ``. _ + = -``, starting with a letter or digit, at most 200
    characters: no ``/``, no ``..``, no absolute path, so a name can never write outside
    the folder it is joined to.
    """
    if not isinstance(value, str) or not value or len(value) > 200 or not _NAME.match(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a valid name: use letters, digits and . _ + = - "
            "(no '/', no '..', at most 200 characters); it becomes a folder name"
        )
    return value


def _numeric_only(annotation: Any) -> bool:
    """Whether a field's type admits int or float but not bool."""
    if typing.get_origin(annotation) is typing.Annotated:  # Annotated[int, Field(ge=1)]: the int
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return bool is not annotation and bool not in args and any(a in (int, float) for a in args)


def _list_of_numbers(annotation: Any) -> bool:
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(typing.get_origin(a) is list and _numeric_only(typing.get_args(a)[0] if typing.get_args(a) else Any)
               for a in args)


class StrictModel(BaseModel):
    """Base of every config: unknown keys, booleans given for numbers and non-finite floats
    are errors (YAML's ``true`` would otherwise count as 1, ``.inf`` would pass ``> 0``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

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
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None:
                    continue
                if isinstance(value, bool) and _numeric_only(field.annotation):
                    raise ConfigError(f"{key} must be a number, not a boolean ({str(value).lower()})")
                if (isinstance(value, list) and any(isinstance(v, bool) for v in value)
                        and _list_of_numbers(field.annotation)):
                    raise ConfigError(f"{key} must hold numbers, not booleans ({value})")
        return data


def _field_info(model: type[BaseModel] | None, loc: tuple) -> Any:
    """The pydantic ``FieldInfo`` at ``loc`` inside ``model`` (nested models followed), or None."""
    info = None
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue  # a list index: the constraint is on the items (not followed)
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        options = typing.get_args(info.annotation) or (info.annotation,)  # Model | None: the model
        model = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return info


def _bounds(info: Any) -> tuple[Any, bool, Any, bool]:
    """``(low, low_open, high, high_open)`` of a field's numeric constraints (None: unbounded)."""
    lo = hi = None
    lo_open = hi_open = False
    for m in getattr(info, "metadata", ()):
        if getattr(m, "ge", None) is not None:
            lo, lo_open = m.ge, False
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi, hi_open = m.le, False
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    return lo, lo_open, hi, hi_open


_BOUND_ERRORS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _problem(e: dict, model: type[BaseModel] | None) -> tuple[str, str]:
    """``(dotted key, message)`` of one pydantic error, in nclab's words: bounds as an interval
    with the value given, choices with the valid names and the closest one."""
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "str", "list"))))
    key = ".".join(str(p) for p in loc)
    kind, value = e["type"], e.get("input")
    if kind in _BOUND_ERRORS:
        lo, lo_open, hi, hi_open = _bounds(_field_info(model, loc))
        if lo is not None and hi is not None:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            return key, f"{key} must lie in {interval}; got {value}"
        op = _BOUND_ERRORS[kind]
        return key, f"{key} must be {op} {next(iter(e['ctx'].values()))}; got {value}"
    if kind == "literal_error":
        valid = re.findall(r"'([^']*)'", e["ctx"]["expected"])
        hint = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.4)
        msg = f"unknown {key} {value!r}; valid: {', '.join(valid)}"
        return key, msg + (f" (did you mean {hint[0]!r}?)" if hint else "")
    msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "value_error" or not key or msg.startswith(key):
        return key, msg
    return key, f"{key}: {msg}"


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, naming the dotted key (see :func:`config_error`)."""
    return "\n".join(_problem(e, model)[1] for e in err.errors())


def config_error(err: ValidationError, model: type[BaseModel] | None = None, *, prefix: str = "") -> ConfigError:
    """A pydantic ``ValidationError`` as a :class:`ConfigError` with one line per problem (no
    pydantic URLs) and ``field`` set to the dotted key of the first problem."""
    problems = [_problem(e, model) for e in err.errors()]
    text = "; ".join(m for _, m in problems) if len(problems) <= 3 else \
        "; ".join(m for _, m in problems[:3]) + f"; and {len(problems) - 3} more problems"
    return ConfigError(prefix + text, field=problems[0][0] if problems else None)


# Bounds of every YAML document nclab reads (configs, sweep specs, --set values). Aliases are
# shared in the parsed object but multiply when the value is validated, hashed or written back,
# so a 500-byte "billion laughs" file would take all memory; deep nesting would exhaust the stack.
YAML_MAX_DEPTH = 64  # nested lists/mappings
YAML_MAX_NODES = 100_000  # values after expanding every alias
YAML_MAX_BYTES = 16 * 2**20  # a config or spec file


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses nesting deeper than ``YAML_MAX_DEPTH`` while composing."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nesting deeper than {YAML_MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_depth(text: str) -> None:
    """Refuse nesting beyond ``YAML_MAX_DEPTH`` from libyaml's event stream, when PyYAML has it:
    the pure-Python scanner slows quadratically with depth (seconds for 20,000 levels) before
    the composer's own check is reached; the events stop at the first level too deep."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > YAML_MAX_DEPTH:
                    raise ConfigError(f"nesting deeper than {YAML_MAX_DEPTH} levels (line {event.start_mark.line + 1})")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:  # libyaml stops at its own limit (1000 levels) while scanning ahead
        if "nesting depth" not in str(getattr(exc, "problem", "")):
            raise
        mark = exc.problem_mark
        raise ConfigError(f"nesting deeper than {YAML_MAX_DEPTH} levels (line {mark.line + 1 if mark else '?'})") from None


def _expanded_size(root: yaml.Node) -> int:
    """The number of values ``root`` holds once every alias is expanded (memoised per node,
    so a 10-level alias bomb is counted in microseconds); a recursive alias is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError("a recursive alias (an anchor used inside itself)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def safe_yaml(text: str, *, source: str = "YAML") -> Any:
    """Parse one YAML document with PyYAML's safe loader, bounded: at most ``YAML_MAX_DEPTH``
    levels and ``YAML_MAX_NODES`` values after alias expansion. Every problem is one
    ``ConfigError`` line that names ``source`` (a file name or the ``--set`` item)."""
    loader = _BoundedLoader(text)
    try:
        _check_depth(text)
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node)
        if n > YAML_MAX_NODES:
            raise ConfigError(f"{source}: refused, its aliases expand to {n:,} values (at most {YAML_MAX_NODES:,})")
        return loader.construct_document(node)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"{source}:") else f"{source}: refused, {msg}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:  # deep nesting inside one scalar-free construct the depth bound missed
        raise ConfigError(f"{source}: refused, nested too deeply") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: its problem and where (``line L, column C``)."""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["parse error"])[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def read_yaml_file(path: str | Path) -> Any:
    """The YAML document in ``path`` (any type), read with :func:`safe_yaml`'s bounds; a missing,
    unreadable, oversized or non-UTF-8 file is a ``ConfigError`` that names it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > YAML_MAX_BYTES:
            raise ConfigError(f"{p}: refused, {size:,} bytes is larger than a config can be ({YAML_MAX_BYTES:,})")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    return safe_yaml(text, source=str(p))


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (see :func:`read_yaml_file`); a clear error for a missing, unreadable
    or non-mapping file."""
    p = Path(path)
    data = read_yaml_file(p)
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
        if not key.strip():
            raise ConfigError(f"override {item!r} has an empty key (e.g. optim.lr=0.05)")
        try:
            value = safe_yaml(raw, source=f"override {item!r}")
        except ConfigError as exc:
            if "is not valid YAML" not in str(exc):
                raise
            problem = str(exc).split("is not valid YAML: ", 1)[1]
            raise ConfigError(
                f"override {item!r}: the value {raw!r} is not valid YAML ({problem}); "
                "quote it, e.g. --set 'key=\"text\"'"
            ) from None
        set_dotted(out, key.strip(), value)
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


CONFIG_PATH_KEYS: tuple[str, ...] = ("dataset.path", "dataset.data_dir")
"""Config keys holding file paths: relative values in a YAML file are relative to that file's folder."""


def resolve_config_paths(data: dict, folder: str | Path) -> dict:
    """``data`` with every relative path of :data:`CONFIG_PATH_KEYS` made absolute against
    ``folder`` (the folder of the YAML file it was read from), so a config trains the same
    from any working directory. Absolute and ``~`` paths are kept; ``data`` is not modified."""
    out = dict(data)
    for dotted in CONFIG_PATH_KEYS:
        section, key = dotted.split(".")
        sub = out.get(section)
        if not isinstance(sub, dict) or not isinstance(sub.get(key), str) or not sub[key]:
            continue
        if Path(sub[key]).expanduser().is_absolute():
            continue
        out[section] = {**sub, key: os.path.abspath(Path(folder) / sub[key])}
    return out
