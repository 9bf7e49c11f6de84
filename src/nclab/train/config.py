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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from nclab.config import (
    ConfigError,
    StrictModel,
    config_error,
    deep_merge,
    load_yaml,
    parse_overrides,
    resolve_config_paths,
)
from nclab.losses import LOSSES
from nclab.metrics.conventions import CONVENTIONS
from nclab.models import ACTIVATIONS, MODELS
from nclab.noise import NOISE_KINDS


def _model_name(value: str) -> str:
    # models can be registered at run time (nclab.models.register_model): not a fixed Literal
    if value not in MODELS:
        hint = difflib.get_close_matches(str(value), list(MODELS), n=1, cutoff=0.4)
        msg = f"unknown model {value!r}; valid: {', '.join(MODELS)}"
        raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return value


# Choices and bounds are pydantic constraints (Literal, Field(ge=..., le=...)); the messages
# ("noise.rate must lie in [0.0, 1.0]; got 1.5", "unknown loss.name ...") come from
# nclab.config.config_error. Upper bounds keep a typo from taking the machine:
# torch segfaults with 10^5 threads, a 10^5-layer MLP takes minutes to build.
MAX_THREADS = 256
MAX_DEPTH = 128
MAX_WIDTH = 16384  # an MLP layer of 16384 x 16384 float32 weights is 1 GiB
MAX_CHANNELS = 4096
MAX_WIDTH_MULTIPLIER = 64.0

NoiseKind = Literal[NOISE_KINDS]  # type: ignore[valid-type]
LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
Activation = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
Convention = Literal[tuple(CONVENTIONS)]  # type: ignore[valid-type]


class DatasetConfig(StrictModel):
    """Which data: a registered dataset (or ``npz`` with ``path``), a class subset, per-class
    subsampling, preprocessing. ``classes``: null = all classes of the dataset; an int C keeps
    labels 0..C-1 (the paper's binary task is ``classes: 2``); a list keeps those ids."""

    name: str = "digits"
    data_dir: str | None = None
    path: str | None = None  # the file of dataset npz (x, y[, x_test, y_test, clean_y]); passed to registered loaders
    classes: int | list[int] | None = None  # null = all classes (no silent subset)
    per_class: int | None = Field(None, ge=1)  # null = all
    preprocess: Literal["native", "paper"] = "native"
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # held out from the NOISY training set (stream "split")
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)  # loader options, e.g. synthetic's num_classes


class NoiseConfig(StrictModel):
    """Label noise on the training set (see ``nclab.noise``); test labels stay clean."""

    kind: NoiseKind = "none"
    rate: float = Field(0.0, ge=0.0, le=1.0)
    exact: bool = False
    latent_fraction: float = Field(0.0, ge=0.0, le=1.0)  # > 0: the latent-class variant (labels l -> l + C)
    pairs: dict[int, int] | None = None  # pairflip map; null = c -> c+1 mod C
    transition: list[list[float]] | None = None  # kind "matrix"

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

    name: LossName = "ce"
    alpha: float = Field(0.1, ge=0.0, lt=1.0)
    gamma: float = Field(2.0, ge=0.0)

    def params(self) -> dict[str, float]:
        """The parameters this loss takes (others are ignored, not passed)."""
        return {k: getattr(self, k) for k in LOSSES[self.name].params}


class ModelConfig(StrictModel):
    """Architecture; options a model does not use are ignored (mlp: depth/width/feature_dim/
    batch_norm/activation; cnn: channels/feature_dim/batch_norm/activation; resnet18:
    width_multiplier)."""

    name: str = "mlp"
    depth: int = Field(3, ge=1, le=MAX_DEPTH)
    width: int = Field(256, ge=1, le=MAX_WIDTH)
    feature_dim: int | None = Field(None, ge=1, le=MAX_WIDTH)  # mlp: null = num_classes; cnn: null = 64
    batch_norm: bool = True
    activation: Activation = "relu"
    channels: int = Field(32, ge=1, le=MAX_CHANNELS)  # cnn: channels of the first stage (the second has 2x)
    width_multiplier: float = Field(1.0, gt=0.0, le=MAX_WIDTH_MULTIPLIER)
    classifier_bias: bool = True  # false: logits W h without b (mlp, cnn, resnet18)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _model_name(v)

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
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False
    fused: bool = True  # PyTorch's fused kernel (CPU and CUDA): same update, fewer passes over memory

    @model_validator(mode="after")
    def _nesterov(self) -> "OptimConfig":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov needs name 'sgd' and momentum > 0")
        return self


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, a pure function of the epoch (see ``nclab.train.schedule``)."""

    name: Literal["none", "step", "multistep", "cosine"] = "none"
    step_size: int = Field(40, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    milestones: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    min_lr: float = Field(0.0, ge=0.0)  # cosine floor

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"schedule.milestones must be strictly increasing positive epochs; got {v}")
        return v


class StopConfig(StrictModel):
    """Early stop at the terminal phase: stop once the eval-mode accuracy on the *noisy*
    training labels is >= ``train_acc`` for ``patience`` consecutive epochs (``epochs``
    stays the cap). ``stop: null`` (the default) or ``train_acc: null`` trains for exactly
    ``epochs``."""

    train_acc: float | None = Field(None, gt=0.0, le=1.0)
    patience: int = Field(1, ge=1)


class TrainConfig(StrictModel):
    """One training run. ``TrainConfig.from_sources(yaml_path, overrides)`` builds it."""

    name: str = "run"
    seed: int = Field(0, ge=0)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_every: int = Field(1, ge=1)
    # full: every evaluation runs the metric suite on train and test features; light: losses and
    # accuracies only, the suite once at the end (final epoch or terminal stop) - with
    # record_dynamics this keeps per-epoch bookkeeping to one forward pass
    eval_mode: Literal["full", "light"] = "full"
    eval_batch_size: int = Field(1024, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    # torch intra-op threads on CPU; results depend on it, so it is part of the run's identity
    threads: int = Field(1, ge=1, le=MAX_THREADS)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    convention: Convention = "zhu2021"
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
            raise config_error(err, cls) from None

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
