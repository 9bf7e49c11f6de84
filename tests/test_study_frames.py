"""The class-means geometry classifier on constructed means: frame, dead class, other."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.metrics.frames import DEAD, FRAME, OTHER, FrameThresholds, class_means, classify_features, classify_means


def test_orthogonal_frame():
    g = classify_means(3.0 * np.eye(2))
    assert g.kind == FRAME and g.max_abs_cos == 0 and g.norm_ratio == 1 and g.orth_error == pytest.approx(0)
    # 10 classes in d = 10 with small perturbations and norms within 20 %
    m = np.diag(np.linspace(2.0, 2.3, 10)) + 0.01 * np.abs(np.random.default_rng(0).normal(size=(10, 10)))
    assert classify_means(m).kind == FRAME


def test_dead_class():
    g = classify_means(np.array([[3.0, 0.0], [0.02, 0.01]]))
    assert g.kind == DEAD and g.dead_classes == [1] and g.norm_ratio < 0.1
    assert classify_means(np.zeros((2, 2))).kind == DEAD


def test_other():
    assert classify_means(np.array([[1.0, 0.0], [1.0, 1.0]])).kind == OTHER  # 45 degrees
    assert classify_means(np.array([[1.0, 0.0], [0.0, 0.5]])).kind == OTHER  # orthogonal, unequal norms
    # thresholds are parameters: a looser norm ratio accepts it
    assert classify_means(np.array([[1.0, 0.0], [0.0, 0.5]]), thresholds=FrameThresholds(norm_ratio=0.4)).kind == FRAME


def test_from_features_and_errors():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    x = np.abs(np.eye(2)[y] * 3 + 0.1 * rng.normal(size=(100, 2)))
    assert np.allclose(class_means(x, y), [x[:50].mean(0), x[50:].mean(0)])
    assert classify_features(x, y).kind == FRAME
    with pytest.raises(ValueError, match="no samples"):
        class_means(x, y, num_classes=3)
    with pytest.raises(ValueError):
        classify_means(np.ones((1, 3)))
    with pytest.raises(ValueError):
        FrameThresholds(dead_ratio=0.9)
