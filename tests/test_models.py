"""Models: shapes, features, determinism of the generator-only initialisation."""

from __future__ import annotations

import pytest
import torch

from nclab.models import MODELS, build_model, init_parameters
from nclab.seeding import torch_generator


def _params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.parametrize(
    "name, shape, opts",
    [
        ("mlp", (1, 8, 8), {"depth": 3, "width": 16}),
        ("cnn", (3, 16, 16), {"width": 4, "feature_dim": 8}),
        ("resnet18", (3, 16, 16), {"width_multiplier": 0.125}),
    ],
)
def test_shapes_and_feature_contract(name, shape, opts):
    model = build_model(name, input_shape=shape, num_classes=5, seed=1, **opts).eval()
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0))
    logits, feats = model.forward_features(x)
    assert logits.shape == (6, 5)
    assert feats.shape == (6, model.classifier.in_features)
    assert isinstance(model.classifier, torch.nn.Linear)
    # features are exactly the classifier's input, and forward agrees with forward_features
    torch.testing.assert_close(model.classifier(feats), logits)
    torch.testing.assert_close(model(x), logits)


def test_mlp_features_nonnegative_and_dim_equals_classes():
    model = build_model("mlp", input_shape=(64,), num_classes=2, depth=4, width=32)
    _, feats = model.forward_features(torch.randn(50, 64) * 10)
    assert feats.shape == (50, 2)
    assert (feats >= 0).all() and (feats > 0).any()
    # depth blocks: depth Linear layers in the body, BN after each, then the classifier
    linears = [m for m in model.body if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 32, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.body) == 4
    plain = build_model("mlp", input_shape=(64,), num_classes=3, depth=2, width=8, batch_norm=False,
                        feature_dim=5, activation="tanh")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert plain.classifier.in_features == 5


def test_same_seed_same_params_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = build_model("resnet18", input_shape=(3, 8, 8), num_classes=3, width_multiplier=0.125, seed=7)
    b = build_model("resnet18", input_shape=(3, 8, 8), num_classes=3, width_multiplier=0.125,
                    generator=torch_generator(7, "init"))
    c = build_model("resnet18", input_shape=(3, 8, 8), num_classes=3, width_multiplier=0.125, seed=8)
    assert torch.equal(state, torch.random.get_rng_state()), "building a model must not draw from the global RNG"
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c)))


def test_default_like_init_ranges():
    model = build_model("mlp", input_shape=(100,), num_classes=2, depth=2, width=50, seed=0)
    lin = model.body[1]
    bound = 1 / 100**0.5
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert float(lin.weight.detach().std()) == pytest.approx(bound / 3**0.5, rel=0.05)
    bn = model.body[2]
    assert torch.equal(bn.weight, torch.ones(50)) and torch.equal(bn.running_var, torch.ones(50))


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="did you mean 'mlp'"):
        build_model("mpl", input_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="valid: mlp, resnet18, cnn"):
        build_model("vit", input_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="does not take.*'depht'.*valid options"):
        build_model("mlp", input_shape=(4,), num_classes=2, depht=3)
    with pytest.raises(ValueError, match="unknown activation"):
        build_model("mlp", input_shape=(4,), num_classes=2, activation="swish")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        build_model("mlp", input_shape=(4,), num_classes=2, depth=0)
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", input_shape=(64,), num_classes=2)
    assert set(MODELS) == {"mlp", "resnet18", "cnn"}


def test_init_parameters_rejects_unknown_parametrised_module():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

    with pytest.raises(TypeError, match="does not know how to initialise Odd"):
        init_parameters(torch.nn.Sequential(Odd()), generator=torch.Generator())
