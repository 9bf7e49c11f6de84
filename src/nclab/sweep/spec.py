"""Sweep specifications: a base config, a grid, random draws and seeds -> run configs.

A spec (YAML or dict) looks like::

    name: md-digits
    base: {epochs: 30, dataset: {name: digits}}     # or base_file: ../train/digits.yaml
    grid:                                           # dotted field path -> list of values
      loss.name: [ce, ls]
      noise.rate: [0.0, 0.2, 0.4]
    random:                                         # optional: `trials` draws per grid point
      trials: 4
      seed: 0
      params:
        optim.lr: {dist: loguniform, low: 1.0e-4, high: 0.5}
        loss.alpha: {dist: uniform, low: 0.01, high: 0.25}
        schedule.gamma: {dist: choice, values: [0.01, 0.1, 0.5]}
    seeds: [0, 1, 2]

Expansion is the Cartesian product ``grid x random-trials x seeds`` (in that nesting
order, grid keys in the order written). Random trial ``t`` draws every parameter from
``numpy_generator(random.seed, f"sweep-random/{t}")``, so trial ``t`` gets the same values
at every grid point and adding trials never changes earlier ones.

The identity of a run is :func:`config_hash` of its *resolved* config (every default
written out by the run-config model when one is given): the same experiment gets the same
hash whichever spec produced it, so a store never runs it twice.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from nclab.config import ConfigError, StrictModel, config_error, deep_merge, load_yaml, resolve_config_paths, set_dotted

__all__ = [
    "RandomParam",
    "RandomSpec",
    "SweepSpec",
    "RunSpec",
    "canonical_json",
    "config_hash",
    "draw_param",
    "expand",
    "get_dotted",
    "load_spec",
    "default_resolver",
]

#: Fields that label a run but do not change what it computes; left out of the hash.
HASH_EXCLUDE: tuple[str, ...] = ("name",)


class RandomParam(StrictModel):
    """One random draw: ``loguniform``/``uniform`` on [low, high], ``int`` on {low..high},
    or ``choice`` among ``values`` (uniform)."""

    dist: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "RandomParam":
        if self.dist == "choice":
            if not self.values:
                raise ValueError("dist 'choice' needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError("dist 'choice' takes 'values', not 'low'/'high'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"dist {self.dist!r} needs both 'low' and 'high'")
        if self.values is not None:
            raise ValueError(f"dist {self.dist!r} takes 'low'/'high', not 'values'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"need finite low <= high; got low={self.low}, high={self.high}")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"dist 'loguniform' needs low > 0; got {self.low}")
        if self.dist == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("dist 'int' needs integer low and high")
        return self


#: The most runs one spec may expand to (grid points x trials x seeds): an expansion is held in
#: memory and every run becomes a row of the store, so a typo (trials: 1e9) is refused up front.
MAX_RUNS = 100_000


class RandomSpec(StrictModel):
    """``trials`` random draws of ``params`` per grid point, from generator stream ``seed``."""

    trials: int = Field(1, ge=1, le=MAX_RUNS)
    seed: int = 0
    params: dict[str, RandomParam] = Field(default_factory=dict)


class SweepSpec(StrictModel):
    """A sweep: ``base`` config (inline and/or ``base_file``) varied by ``grid``, ``random``
    and ``seeds``. ``base_file`` is read relative to the spec file; inline ``base`` is
    merged over it."""

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.\-]+$")
    base_file: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: RandomSpec | None = None
    seeds: list[int] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _one_component(cls, name: str) -> str:
        if set(name) == {"."}:  # "." and ".." would name a folder outside the store's sweeps
            raise ValueError(f"sweep name {name!r} is not a folder name; use letters, digits, _ . -")
        return name

    @field_validator("grid")
    @classmethod
    def _grid_nonempty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid entry {key!r} has no values (an empty list would expand to no runs)")
            if not key or any(not part for part in key.split(".")):
                raise ValueError(f"grid key {key!r} is not a dotted field path")
        return grid

    @model_validator(mode="after")
    def _no_overlap(self) -> "SweepSpec":
        rnd = set(self.random.params) if self.random else set()
        both = rnd & set(self.grid)
        if both:
            raise ValueError(f"fields both gridded and drawn at random: {sorted(both)}")
        if self.seeds and ("seed" in self.grid or "seed" in rnd):
            raise ValueError("give seeds either in 'seeds' or in the grid, not both")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds: {self.seeds}")
        sizes = [len(v) for v in self.grid.values()]
        sizes += [self.random.trials] if self.random is not None and self.random.params else []
        sizes += [len(self.seeds)] if self.seeds else []
        if math.prod(sizes) > MAX_RUNS:
            raise ValueError(f"the sweep expands to {math.prod(sizes):,} runs ({' x '.join(map(str, sizes))}); "
                             f"at most {MAX_RUNS:,} per spec: split it into several specs")
        return self


class RunSpec(StrictModel):
    """One expanded run: its resolved config, identity hash and the varied values."""

    hash: str
    name: str
    config: dict[str, Any]
    varied: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- hashing
def _canonical(obj: Any) -> Any:
    """Normalise for hashing: integral floats -> int (0 == 0.0), tuples -> lists, sorted keys."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ConfigError(f"cannot hash a non-finite number ({obj}) in a config")
        return int(obj) if obj.is_integer() and abs(obj) < 2**53 else obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return _canonical(obj.item())
    raise ConfigError(f"config value of type {type(obj).__name__} cannot be hashed: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, integral floats written as ints."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict[str, Any], *, length: int = 16) -> str:
    """Run identity: ``sha256(canonical_json(config minus HASH_EXCLUDE))[:length]`` (hex)."""
    body = {k: v for k, v in config.items() if k not in HASH_EXCLUDE}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()[:length]


# --------------------------------------------------------------------------- expansion
def get_dotted(data: dict, dotted: str, default: Any = None) -> Any:
    """``data['a']['b']`` for ``'a.b'``; ``default`` if any level is missing."""
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def draw_param(param: RandomParam, rng) -> Any:
    """One value of ``param`` from the numpy generator ``rng``.

    loguniform: ``exp(U[log low, log high])``; uniform: ``U[low, high]``;
    int: uniform integer in ``[low, high]``; choice: uniform element of ``values``.
    """
    if param.dist == "loguniform":
        return float(math.exp(rng.uniform(math.log(param.low), math.log(param.high))))
    if param.dist == "uniform":
        return float(rng.uniform(param.low, param.high))
    if param.dist == "int":
        return int(rng.integers(int(param.low), int(param.high) + 1))
    values = param.values or []
    return copy.deepcopy(values[int(rng.integers(len(values)))])


def default_resolver() -> Callable[[dict], dict] | None:
    """``TrainConfig.model_validate(d).model_dump()`` when the trainer is importable, else None."""
    try:
        from nclab.train import TrainConfig  # noqa: PLC0415 (optional until the trainer lands)
    except ImportError:
        return None

    def resolve(cfg: dict) -> dict:
        try:
            return TrainConfig.model_validate(cfg).model_dump(mode="json")
        except ValidationError as exc:  # one line per problem, no pydantic URLs
            raise config_error(exc, TrainConfig) from None

    return resolve


def load_spec(path: str | Path) -> tuple[SweepSpec, dict[str, Any]]:
    """Read a spec file; returns the spec and its base config (``base_file`` merged with ``base``)."""
    path = Path(path)
    data = load_yaml(path)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, SweepSpec, prefix=f"{path}: invalid sweep spec: ") from None
    return spec, spec_base(spec, relative_to=path.parent)


def spec_base(spec: SweepSpec, *, relative_to: Path | None = None) -> dict[str, Any]:
    """The base config of ``spec``: ``base_file`` (relative to ``relative_to``) merged with ``base``.
    Relative data paths (``dataset.path``, ``dataset.data_dir``) are made absolute against the
    folder of the file that holds them."""
    base: dict[str, Any] = {}
    if spec.base_file:
        bf = Path(spec.base_file)
        if not bf.is_absolute() and relative_to is not None:
            bf = relative_to / bf
        base = resolve_config_paths(load_yaml(bf), bf.parent)  # its paths are relative to its own folder
    own = copy.deepcopy(spec.base)
    if relative_to is not None:
        own = resolve_config_paths(own, relative_to)
    return deep_merge(base, own)


def expand(
    spec: SweepSpec,
    *,
    base: dict[str, Any] | None = None,
    resolve: Callable[[dict], dict] | None | Literal["auto"] = "auto",
) -> list[RunSpec]:
    """All runs of ``spec``: ``grid x random.trials x seeds`` applied to the base config.

    ``resolve`` maps a raw nested config to the fully resolved one (defaults filled in,
    validated); ``"auto"`` uses the trainer's ``TrainConfig`` when importable. A config the
    resolver rejects raises :class:`ConfigError` naming the varied values. Runs whose resolved
    configs are identical (e.g. a grid over a field the config ignores) are merged: each hash
    appears once.
    """
    if resolve == "auto":
        resolve = default_resolver()
    base_cfg = spec_base(spec) if base is None else copy.deepcopy(base)
    keys = list(spec.grid)
    grid_points = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    trials: list[dict[str, Any]] = [{}]
    if spec.random is not None and spec.random.params:
        from nclab.seeding import numpy_generator  # noqa: PLC0415 (imports torch: only when needed)

        trials = []
        for t in range(spec.random.trials):
            rng = numpy_generator(spec.random.seed, f"sweep-random/{t}")
            # draw in sorted key order so the spec's key order does not change values
            trials.append({k: draw_param(spec.random.params[k], rng) for k in sorted(spec.random.params)})
    seeds: list[int | None] = list(spec.seeds) if spec.seeds else [None]

    runs: list[RunSpec] = []
    seen: set[str] = set()
    for point in grid_points:
        for trial in trials:
            for seed in seeds:
                cfg = copy.deepcopy(base_cfg)
                varied = {**point, **trial}
                if seed is not None:
                    varied["seed"] = seed
                for key, value in varied.items():
                    set_dotted(cfg, key, copy.deepcopy(value))
                label = ",".join(f"{k}={_short(v)}" for k, v in varied.items())
                cfg.setdefault("name", spec.name)  # placeholder; replaced by the hash-based name
                if resolve is not None:
                    try:
                        cfg = resolve(cfg)
                    except Exception as exc:  # ConfigError (the default resolver) or a caller's error
                        raise ConfigError(f"sweep {spec.name!r}: invalid run config ({label or 'base'}): "
                                          + " ".join(str(exc).split()), field=getattr(exc, "field", None)) from None
                h = config_hash(cfg)
                if h in seen:
                    continue
                seen.add(h)
                name = f"{spec.name}-{h[:8]}"
                cfg["name"] = name
                runs.append(RunSpec(hash=h, name=name, config=cfg, varied=varied))
    return runs


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
