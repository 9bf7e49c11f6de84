"""The integrations under reduced precision: Lightning ``bf16-true`` / ``bf16-mixed`` on CPU.

Tolerance: bfloat16 keeps 8 significant bits (unit round-off 2⁻⁸ ≈ 0.4 %). The model's
weights and activations are rounded at that scale through two layers, so NC1 — a ratio of
scatters — and the other continuous metrics agree with the float32 run to 1 % relative
(BF16_RTOL, 2.5 round-offs; measured here: 0.23 % at most). Accuracies may differ by a
sample or two near the decision boundary. The metric states themselves stay float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as L

from lightning_tiny import Tiny
from nclab.integrations.lightning import NeuralCollapseCallback
from nclab.integrations.torchmetrics import NeuralCollapse

torch.set_num_threads(1)
C, D, N = 3, 8, 120
BF16_RTOL = 0.01


def _data():
    g = torch.Generator().manual_seed(0)
    clean = torch.arange(N) % C
    x = 3 * torch.randn(C, D, generator=g)[clean] + torch.randn(N, D, generator=g)
    noisy = clean.clone()
    noisy[:12] = (noisy[:12] + 1) % C
    return x, noisy, clean


def _fit(precision: str):
    x, noisy, clean = _data()
    evaluation = DataLoader(TensorDataset(x, noisy, clean), batch_size=64)
    cb = NeuralCollapseCallback(evaluation)
    model = Tiny(C, D, lr=0.0)  # weights stay put: runs differ by precision only
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision=precision, logger=False,
                        callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_train_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers, bf16 on CPU
        trainer.fit(model, DataLoader(TensorDataset(x, noisy), batch_size=32), val_dataloaders=evaluation)
    return model, cb


@pytest.fixture(scope="module")
def float32_run():
    return _fit("32-true")


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_callback_and_metric_under_bf16_match_float32(precision, float32_run):
    ref_model, ref_cb = float32_run
    model, cb = _fit(precision)
    if precision == "bf16-true":
        assert model.fc.weight.dtype == torch.bfloat16  # the Trainer really converted the module
    assert model.val_nc.feature_moments.dtype == torch.float64  # ... but not the metric's states
    for key in ("nc1", "nc2_etf_error_means", "nc3_zhu", "memorization", "dilation"):
        assert cb.last_result.values[key] == pytest.approx(ref_cb.last_result.values[key], rel=BF16_RTOL), key
    for key in ("nc1", "nc3_zhu", "realized_noise_rate"):
        assert model.logged[key] == pytest.approx(ref_model.logged[key], rel=BF16_RTOL), key
    # accuracy is a count: a sample within round-off of the boundary may flip (2 of N allowed)
    assert cb.last_result.values["accuracy"] == pytest.approx(ref_cb.last_result.values["accuracy"], abs=2 / N)
    assert model.logged["accuracy"] == pytest.approx(ref_model.logged["accuracy"], abs=2 / N)


def test_metric_state_stays_float64_through_dtype_moves():
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(30) % 3
    m = NeuralCollapse(3, feature_dim=4)
    m.update(x, y)
    before = m.feature_moments.clone()
    for move in (lambda m: m.to(torch.float32), lambda m: m.to(torch.bfloat16), lambda m: m.set_dtype(torch.half),
                 lambda m: m.half(), lambda m: m.to("cpu", torch.float16)):
        m = move(m)
        assert all(getattr(m, k).dtype == torch.float64 for k in m._defaults)
        assert torch.equal(m.feature_moments, before)  # not rounded on the way
    m.update(x.to(torch.bfloat16), y)  # bf16 inputs are cast in update
    m.reset()
    assert m.feature_moments.dtype == torch.float64


def test_callback_without_trainer_casts_inputs_to_the_model_dtype():
    x, noisy, clean = _data()
    cb = NeuralCollapseCallback((x, noisy, clean))
    ref = cb.measure(Tiny(C, D))
    out = cb.measure(Tiny(C, D).to(torch.bfloat16))  # float32 data into a bf16 model: no dtype clash
    assert out["train/nc1"] == pytest.approx(ref["train/nc1"], rel=BF16_RTOL)
