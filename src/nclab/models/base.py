"""The shape every nclab model has: a feature body, then one linear classifier."""

from __future__ import annotations

from torch import Tensor, nn


class FeatureModel(nn.Module):
    """``forward(x) -> logits``; ``forward_features(x) -> (logits, features)`` where the
    features are the classifier's input. Subclasses set ``body``, ``classifier`` and
    ``feature_dim`` (or override ``features``)."""

    body: nn.Module
    classifier: nn.Linear
    feature_dim: int

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.classifier(h), h

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]
