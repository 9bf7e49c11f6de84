import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nclab.losses import (
    cross_entropy,
    focal_loss,
    get_loss,
    label_relaxation,
    label_smoothing,
    mse_loss,
    soft_targets,
)

# logits (0, ln 3): softmax = (1/4, 3/4)
Z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
Y0 = torch.tensor([0])


def test_cross_entropy_hand_value():
    assert float(cross_entropy(Z, Y0)) == pytest.approx(math.log(4.0), rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_label_smoothing_hand_value_and_pytorch(alpha):
    hand = -(1 - alpha / 2) * math.log(0.25) - (alpha / 2) * math.log(0.75)
    assert float(label_smoothing(Z, Y0, alpha=alpha)) == pytest.approx(hand, rel=1e-12)
    assert float(F.cross_entropy(Z, Y0, label_smoothing=alpha)) == pytest.approx(hand, rel=1e-12)


def test_label_relaxation_hand_values():
    # p_y = 0.25 < 1 - alpha: KL(p^r || p) with p^r = (0.9, 0.1)
    hand = 0.9 * math.log(0.9 / 0.25) + 0.1 * math.log(0.1 / 0.75)
    assert float(label_relaxation(Z, Y0, alpha=0.1)) == pytest.approx(hand, rel=1e-12)
    # p_y = 0.95 > 1 - alpha: inside the credal set, zero loss and zero gradient
    z = torch.tensor([[math.log(19.0), 0.0]], dtype=torch.float64, requires_grad=True)
    loss = label_relaxation(z, Y0, alpha=0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(z.grad.abs().sum()) == 0.0
    # three classes: mass outside y is redistributed proportionally to p
    z3 = torch.log(torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64))
    pr = torch.tensor([0.8, 0.2 * 0.5 / 0.8, 0.2 * 0.3 / 0.8], dtype=torch.float64)
    hand3 = float((pr * (pr / torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)).log()).sum())
    assert float(label_relaxation(z3, Y0, alpha=0.2)) == pytest.approx(hand3, rel=1e-12)


def test_mse_and_focal_hand_values():
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert float(mse_loss(z, Y0)) == pytest.approx(0.0 + 4.0)
    assert float(focal_loss(Z, Y0, gamma=2.0)) == pytest.approx(-(0.75**2) * math.log(0.25), rel=1e-12)
    assert float(focal_loss(Z, Y0, gamma=0.0)) == pytest.approx(math.log(4.0), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.floats(0.0, 0.9), st.integers(0, 2**31 - 1))
def test_ls_equals_pytorch_and_soft_target_ce(C, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(7, C, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, C, (7,), generator=g)
    ours = label_smoothing(z, y, alpha=alpha)
    assert float(ours) == pytest.approx(float(F.cross_entropy(z, y, label_smoothing=alpha)), rel=1e-10)
    t = soft_targets(y, C, alpha=alpha, dtype=torch.float64)
    assert torch.allclose(t.sum(1), torch.ones(7, dtype=torch.float64))
    assert float(ours) == pytest.approx(float(-(t * z.log_softmax(1)).sum(1).mean()), rel=1e-12)


def test_registry_and_errors():
    assert isinstance(get_loss("ls", alpha=0.2).alpha, float)
    assert float(get_loss("label-smoothing", alpha=0.1)(Z, Y0)) == pytest.approx(float(label_smoothing(Z, Y0, alpha=0.1)))
    with pytest.raises(ValueError, match="unknown loss 'lss'.*did you mean 'ls'"):
        get_loss("lss")
    with pytest.raises(ValueError, match="unexpected \\['alpa'\\]"):
        get_loss("ls", alpa=0.1)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\)"):
        get_loss("ls", alpha=1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        get_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        cross_entropy(Z, torch.tensor([2]))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(Z, torch.tensor([0.0]))
