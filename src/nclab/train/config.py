"""The training-run configuration: one typed model for YAML, CLI overrides and Python.

Every field has an explicit default, so the resolved ``config.yaml`` of a run
states every choice. Ranges and registry names are checked here, before any data
are loaded, with messages that name the field and (for names) the closest valid
choice.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from nclab.config import ConfigError, StrictModel, deep_merge, format_validation_error, load_yaml, parse_overrides
from nclab.losses import LOSSES
from nclab.models import MODELS
from nclab.noise import NOISE_KINDS


def _choice(value: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    if value not in valid:
        hint = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.4)
        msg = f"unknown {what} {value!r}; valid: {', '.join(valid)}"
        raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return value


def _in_range(value: float, lo: float, hi: float, *, name: str, hi_open: bool = False, lo_open: bool = False) -> float:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}; got {value}")
    return value


class DatasetConfig(StrictModel):
    """Which data: a registered dataset (or ``npz`` with ``path``), a class subset, per-class
    subsampling, preprocessing. ``classes``: null = all classes of the dataset; an int C keeps
    labels 0..C-1 (the paper's binary task is ``classes: 2``); a list keeps those ids."""

    name: str = "digits"
    data_dir: str | None = None
    path: str | None = None  # the file of dataset npz (x, y[, x_test, y_test, clean_y]); passed to registered loaders
    classes: int | list[int] | None = None  # null = all classes (no silent subset)
    per_class: int | None = None
    preprocess: Literal["native", "paper"] = "native"
    val_fraction: float = 0.0  # held out from the NOISY training set (stream "split")
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)  # loader options, e.g. synthetic's num_classes

    @field_validator("val_fraction")
    @classmethod
    def _val(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="dataset.val_fraction", hi_open=True)

    @field_validator("per_class")
    @classmethod
    def _per_class(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"dataset.per_class must be >= 1 (or null for all); got {v}")
        return v


class NoiseConfig(StrictModel):
    """Label noise on the training set (see ``nclab.noise``); test labels stay clean."""

    kind: str = "none"
    rate: float = 0.0
    exact: bool = False
    latent_fraction: float = 0.0  # > 0: the latent-class variant (labels l -> l + C)
    pairs: dict[int, int] | None = None  # pairflip map; null = c -> c+1 mod C
    transition: list[list[float]] | None = None  # kind "matrix"

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return _choice(v, NOISE_KINDS, "noise kind")

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="noise.rate")

    @field_validator("latent_fraction")
    @classmethod
    def _latent(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="noise.latent_fraction")

    @model_validator(mode="after")
    def _consistent(self) -> "NoiseConfig":
        if self.kind == "none" and self.rate != 0.0:
            raise ValueError(f"noise.kind is 'none' but noise.rate is {self.rate}; set a kind (e.g. symmetric)")
        if self.kind == "matrix" and self.transition is None:
            raise ValueError("noise.kind 'matrix' needs noise.transition (a row-stochastic C x C list)")
        if self.kind == "matrix" and self.rate == 0.0:
            raise ValueError("noise.kind 'matrix' with rate 0 changes no label; rate 1 uses the matrix as given")
        if self.kind != "pairflip" and self.pairs is not None:
            raise ValueError("noise.pairs is only used by kind 'pairflip'")
        return self


class LossConfig(StrictModel):
    """Training loss (``nclab.losses``); ``alpha`` is used by ls/lr, ``gamma`` by focal."""

    name: str = "ce"
    alpha: float = 0.1
    gamma: float = 2.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _choice(v, list(LOSSES), "loss")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="loss.alpha", hi_open=True)

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"loss.gamma must be >= 0; got {v}")
        return v

    def params(self) -> dict[str, float]:
        """The parameters this loss takes (others are ignored, not passed)."""
        return {k: getattr(self, k) for k in LOSSES[self.name].params}


class ModelConfig(StrictModel):
    """Architecture; options a model does not use are ignored (mlp: depth/width/feature_dim/
    batch_norm/activation; cnn: channels/feature_dim/batch_norm/activation; resnet18:
    width_multiplier)."""

    name: str = "mlp"
    depth: int = 3
    width: int = 256
    feature_dim: int | None = None  # mlp: null = num_classes; cnn: null = 64
    batch_norm: bool = True
    activation: str = "relu"
    channels: int = 32  # cnn: channels of the first stage (the second has 2x)
    width_multiplier: float = 1.0
    classifier_bias: bool = True  # false: logits W h without b (mlp, cnn, resnet18)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _choice(v, list(MODELS), "model")

    @field_validator("depth", "width", "channels")
    @classmethod
    def _pos(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"model.{info.field_name} must be >= 1; got {v}")
        return v

    @field_validator("width_multiplier")
    @classmethod
    def _wm(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"model.width_multiplier must be > 0; got {v}")
        return v

    @field_validator("activation")
    @classmethod
    def _act(cls, v: str) -> str:
        from nclab.models import ACTIVATIONS

        return _choice(v, list(ACTIVATIONS), "activation")

    def options(self) -> dict[str, Any]:
        """Keyword options for ``build_model`` for this architecture."""
        if self.name == "mlp":
            return dict(depth=self.depth, width=self.width, feature_dim=self.feature_dim,
                        batch_norm=self.batch_norm, activation=self.activation, classifier_bias=self.classifier_bias)
        if self.name == "cnn":
            opts = dict(width=self.channels, batch_norm=self.batch_norm, activation=self.activation,
                        classifier_bias=self.classifier_bias)
            if self.feature_dim is not None:
                opts["feature_dim"] = self.feature_dim
            return opts
        if self.name == "resnet18":
            return dict(width_multiplier=self.width_multiplier, classifier_bias=self.classifier_bias)
        return {}  # a model registered with nclab.models.register_model: options bound in its factory


class OptimConfig(StrictModel):
    """Optimizer: SGD (momentum, Nesterov) or Adam; weight decay is coupled (L2 in the gradient)."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    fused: bool = True  # PyTorch's fused kernel (CPU and CUDA): same update, fewer passes over memory

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"optim.lr must be > 0; got {v}")
        return v

    @field_validator("momentum")
    @classmethod
    def _mom(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="optim.momentum", hi_open=True)

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"optim.weight_decay must be >= 0; got {v}")
        return v

    @model_validator(mode="after")
    def _nesterov(self) -> "OptimConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov needs name 'sgd' and momentum > 0")
        return self


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, a pure function of the epoch (see ``nclab.train.schedule``)."""

    name: Literal["none", "step", "multistep", "cosine"] = "none"
    step_size: int = 40
    gamma: float = 0.1
    milestones: list[int] = Field(default_factory=list)
    min_lr: float = 0.0  # cosine floor

    @field_validator("step_size")
    @classmethod
    def _step(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"schedule.step_size must be >= 1; got {v}")
        return v

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: float) -> float:
        return _in_range(v, 0.0, 1.0, name="schedule.gamma", lo_open=True)

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"schedule.milestones must be strictly increasing positive epochs; got {v}")
        return v

    @field_validator("min_lr")
    @classmethod
    def _min_lr(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"schedule.min_lr must be >= 0; got {v}")
        return v


class StopConfig(StrictModel):
    """Early stop at the terminal phase: stop once the eval-mode accuracy on the *noisy*
    training labels is >= ``train_acc`` for ``patience`` consecutive epochs (``epochs``
    stays the cap). ``stop: null`` (the default) or ``train_acc: null`` trains for exactly
    ``epochs``."""

    train_acc: float | None = None
    patience: int = 1

    @field_validator("train_acc")
    @classmethod
    def _acc(cls, v: float | None) -> float | None:
        return None if v is None else _in_range(v, 0.0, 1.0, name="stop.train_acc", lo_open=True)

    @field_validator("patience")
    @classmethod
    def _patience(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"stop.patience must be >= 1; got {v}")
        return v


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


class TrainConfig(StrictModel):
    """One training run. ``TrainConfig.from_sources(yaml_path, overrides)`` builds it."""

    name: str = "run"
    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    eval_every: int = 1
    # full: every evaluation runs the metric suite on train and test features; light: losses and
    # accuracies only, the suite once at the end (final epoch or terminal stop) - with
    # record_dynamics this keeps per-epoch bookkeeping to one forward pass
    eval_mode: Literal["full", "light"] = "full"
    eval_batch_size: int = 1024
    checkpoint_every: int = 1
    threads: int = 1  # torch intra-op threads on CPU; results depend on it, so it is part of the run's identity
    device: Literal["auto", "cpu", "cuda"] = "auto"
    convention: str = "zhu2021"
    save_features: bool = True  # final train features/labels/classifier -> features.npz (nclab metrics reads it)
    record_dynamics: bool = False  # per-sample train logit margins every epoch -> dynamics/ (nclab detect)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    stop: StopConfig | None = None  # no early stop unless configured
    # the terminal phase as an outcome, never a stop: noisy-label train accuracy measured every
    # epoch; the final record's terminal_epoch is the first epoch from which it stayed >= this
    terminal_acc: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("epochs", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every", "threads")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1; got {v}")
        return v

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        from nclab.metrics.conventions import CONVENTIONS

        return _choice(v, list(CONVENTIONS), "convention")

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"seed must be >= 0; got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from nclab.config import safe_name

        return safe_name(v, what="name")  # the default run dir is runs/<name>: one path component

    @model_validator(mode="after")
    def _batch_norm_batch(self) -> "TrainConfig":
        # BatchNorm cannot normalise one sample in train mode: fail now, not mid-run
        if self.batch_size == 1 and (self.model.name == "resnet18" or self.model.batch_norm):
            raise ValueError("batch_size 1 cannot train a model with BatchNorm; use batch_size >= 2 "
                             "or model.batch_norm=false (mlp, cnn)")
        return self

    @classmethod
    def from_sources(
        cls, yaml_path: str | Path | None = None, overrides: list[str] | dict | None = None
    ) -> "TrainConfig":
        """Defaults <- YAML file <- overrides (``["optim.lr=0.05", ...]`` or a nested dict).

        Relative paths in the YAML file (``dataset.path``, ``dataset.data_dir``) are relative
        to the file's folder; in overrides, to the working directory.

        Any problem (unknown key, bad value, unknown name) raises ``ConfigError``
        with one line per problem, naming the dotted key.
        """
        data: dict = load_yaml(yaml_path) if yaml_path is not None else {}
        if yaml_path is not None:
            data = resolve_config_paths(data, Path(yaml_path).parent)
        if overrides:
            over = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
            data = deep_merge(data, over)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Validate a nested dict; errors become one ``ConfigError``."""
        sections = {
            n: f.annotation
            for n, f in cls.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, StrictModel)
        }
        for key in data:
            if key not in cls.model_fields:
                # a section's key given at the top level (``lr=...``): point to its dotted name
                owners = [s for s, model in sections.items() if key in model.model_fields]
                if owners:
                    raise ConfigError(f"unknown top-level key {key!r}; did you mean '{owners[0]}.{key}'?")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err).replace("Value error, ", "")) from None

    def to_dict(self) -> dict:
        """Plain JSON-able nested dict with every default written out."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        # libyaml's emitter when PyYAML was built with it (same text, ~4x faster: every run writes one)
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved config (run identity)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
