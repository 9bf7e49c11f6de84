"""Models: plain ``torch.nn`` modules exposing logits and penultimate features.

Every model has ``forward(x) -> logits``, ``forward_features(x) -> (logits,
features)`` (features = the input of the last linear layer) and ``classifier:
nn.Linear``. ``build_model`` initialises parameters from an explicit generator.
"""

from nclab.models.cnn import SmallCNN
from nclab.models.heads import find_final_linear, logits_of
from nclab.models.init import init_parameters, materialize
from nclab.models.mlp import ACTIVATIONS, MLP
from nclab.models.registry import (
    MODELS,
    FeatureAdapter,
    ModelSpec,
    as_feature_model,
    build_model,
    make_model,
    register_model,
)
from nclab.models.resnet import BasicBlock, ResNet18

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MODELS",
    "BasicBlock",
    "FeatureAdapter",
    "ModelSpec",
    "ResNet18",
    "SmallCNN",
    "as_feature_model",
    "build_model",
    "find_final_linear",
    "logits_of",
    "make_model",
    "register_model",
    "init_parameters",
    "materialize",
]
