"""Model registry: ``build_model(name, ...)``, ``register_model``, and adapters for your own modules."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from nclab.models.cnn import SmallCNN
from nclab.models.heads import find_final_linear, logits_of
from nclab.models.init import materialize
from nclab.models.mlp import MLP
from nclab.models.resnet import ResNet18
from nclab.seeding import torch_generator


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the class and a one-line summary."""

    cls: Callable[..., nn.Module]
    summary: str

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the model accepts besides ``input_shape`` and ``num_classes``."""
        params = inspect.signature(self.cls).parameters  # a class's __init__ or a factory function
        return tuple(p for p, v in params.items()
                     if p not in ("self", "input_shape", "num_classes", "generator")
                     and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD))

    @property
    def takes_generator(self) -> bool:
        """The factory initialises its own parameters from ``generator=`` (else nclab does)."""
        return "generator" in inspect.signature(self.cls).parameters


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(MLP, "the paper's MLP: depth x (Linear -> BN -> act), features of dim num_classes"),
    "resnet18": ModelSpec(ResNet18, "CIFAR-style ResNet-18 (3x3 stem, no max-pool) with a width multiplier"),
    "cnn": ModelSpec(SmallCNN, "small CNN: two conv stages, global pooling, a linear feature layer"),
}
_BUILTIN = frozenset(MODELS)


class FeatureAdapter(nn.Module):
    """Gives any classifier ``module`` nclab's model interface: ``forward(x) -> logits``,
    ``forward_features(x) -> (logits, features)`` with the features = the input of the
    classifier layer (captured by a forward hook), and ``classifier``.

    The classifier is ``layer`` by name, else the last ``nn.Linear`` with
    ``out_features == num_classes`` (as in :func:`nclab.collect.collect`). The module's
    forward may return logits, a tuple starting with them, or a dict with ``"logits"``.
    Parameters are the module's own (state-dict keys gain the prefix ``module.``).
    """

    def __init__(self, module: nn.Module, *, num_classes: int, layer: str | None = None):
        super().__init__()
        self.module = module
        name, lin = find_final_linear(module, int(num_classes), layer=layer)
        object.__setattr__(self, "_classifier", lin)  # not a second registration of the same submodule
        self.classifier_name = name
        self._seen: Tensor | None = None
        lin.register_forward_hook(self._hook)

    @property
    def classifier(self) -> nn.Linear:
        return self._classifier

    def _hook(self, mod, args, out) -> None:
        self._seen = args[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._seen = None
        z = logits_of(self.module(x))
        h, self._seen = self._seen, None
        if h is None:
            raise RuntimeError(f"the classifier layer {self.classifier_name!r} was not called in forward(); "
                               "name the right one with layer=...")
        return z, h.reshape(h.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.module(x))


def as_feature_model(module: nn.Module, *, num_classes: int, layer: str | None = None) -> nn.Module:
    """``module`` itself when it already has ``forward_features`` and ``classifier: nn.Linear``
    (every nclab model), else a :class:`FeatureAdapter` around it."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(module).__name__}")
    if callable(getattr(module, "forward_features", None)) and isinstance(getattr(module, "classifier", None), nn.Linear):
        return module
    return FeatureAdapter(module, num_classes=num_classes, layer=layer)


def _construct(factory: Callable[..., nn.Module], *, takes_generator: bool, input_shape: tuple[int, ...],
               num_classes: int, generator: torch.Generator, options: dict[str, Any], what: str) -> nn.Module:
    if takes_generator:
        model = factory(input_shape=input_shape, num_classes=num_classes, generator=generator, **options)
    else:
        try:
            model = materialize(lambda: factory(input_shape=input_shape, num_classes=num_classes, **options),
                                generator=generator)
        except TypeError as exc:
            if "init_parameters" not in str(exc):
                raise
            raise TypeError(f"{what}: {exc}. Give the factory a `generator` parameter and initialise the "
                            "parameters from it yourself") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
    return as_feature_model(model, num_classes=num_classes)


def make_model(
    model: nn.Module | Callable[..., nn.Module], *, input_shape: tuple[int, ...], num_classes: int,
    generator: torch.Generator,
) -> nn.Module:
    """The model for ``nclab.train.train(config, model=...)``: an ``nn.Module`` instance is used
    with its current parameters; a factory is called as ``factory(input_shape=..., num_classes=...)``
    (plus ``generator=`` when it takes one, else its parameters are initialised by nclab from
    ``generator``: Linear/Conv2d/norm layers only). Either way the result gets nclab's model
    interface (:func:`as_feature_model`)."""
    if isinstance(model, nn.Module):
        return as_feature_model(model, num_classes=num_classes)
    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a factory; got {type(model).__name__}")
    takes = "generator" in inspect.signature(model).parameters
    return _construct(model, takes_generator=takes, input_shape=tuple(int(s) for s in input_shape),
                      num_classes=int(num_classes), generator=generator, options={}, what="the model factory")


def register_model(name: str, factory: Callable[..., nn.Module], *, summary: str = "", overwrite: bool = False) -> None:
    """Make ``factory`` available as ``model: {name: NAME}`` in configs and :func:`build_model`.

    Contract: ``factory(*, input_shape, num_classes, [generator], **options) -> nn.Module``
    returning logits (b×num_classes). With a ``generator`` parameter the factory
    initialises its parameters from it; without, the module is built on the meta
    device and nclab initialises it from the run's ``"init"`` stream (PyTorch's
    default schemes for Linear, Conv2d and norm layers). A module without
    ``forward_features``/``classifier`` is wrapped in :class:`FeatureAdapter`.
    ``build_model(name, ..., **options)`` passes options through; a config's model
    section passes none (bind them with ``functools.partial``). Built-in names
    cannot be replaced; ``overwrite=True`` replaces an earlier registration.
    """
    if not isinstance(name, str) or not name or name != name.lower() or "-" in name or "_" in name:
        raise ValueError(f"model name must be a non-empty lower-case string without '-' or '_'; got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable; got {type(factory).__name__}")
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in model; choose another name")
    if name in MODELS and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    MODELS[name] = ModelSpec(factory, summary or (factory.__doc__ or "").strip().split("\n")[0] or "registered model")


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...] | list[int],
    num_classes: int,
    generator: torch.Generator | None = None,
    seed: int = 0,
    **options,
) -> nn.Module:
    """Build a registered model with parameters drawn from an explicit generator.

    Parameters
    ----------
    name : ``"mlp"``, ``"resnet18"`` or ``"cnn"`` (see ``MODELS``).
    input_shape : shape of one input sample, e.g. ``(3, 32, 32)`` or ``(1, 8, 8)``.
    num_classes : number of logits.
    generator : CPU ``torch.Generator`` for the initial parameters; when omitted,
        the ``"init"`` stream of ``seed`` is used. The global RNG is never touched.
    **options : model options (e.g. ``depth``, ``width``); an option the model
        does not accept is an error that lists the valid ones.

    Every model has ``forward(x) -> logits``, ``forward_features(x) -> (logits,
    features)`` where the features are the input of the final linear layer, and
    ``classifier: nn.Linear``. The model is returned on CPU in train mode.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        hint = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1, cutoff=0.4)
        msg = f"unknown model {name!r}; valid: {', '.join(MODELS)}"
        raise ValueError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    spec = MODELS[key]
    extra = sorted(set(options) - set(spec.options))
    if extra:
        raise ValueError(f"model {key!r} does not take {extra}; valid options: {', '.join(spec.options)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes; got {input_shape}")
    if generator is None:
        generator = torch_generator(seed, "init")
    if key not in _BUILTIN:
        return _construct(spec.cls, takes_generator=spec.takes_generator, input_shape=shape, num_classes=int(num_classes),
                          generator=generator, options=options, what=f"model {key!r}").train()
    model = materialize(lambda: spec.cls(input_shape=shape, num_classes=int(num_classes), **options), generator=generator)
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise TypeError(f"model {key!r} must expose `classifier: nn.Linear`")
    return model.train()
