"""NeuralCollapseCallback and NeuralCollapse inside a real Lightning Trainer on CPU, read back from CSVLogger."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as L

import nclab
from lightning_tiny import Tiny
from nclab.integrations.lightning import NeuralCollapseCallback
from nclab.metrics import nc_metrics

torch.set_num_threads(1)
C, D, N = 3, 8, 240


def _data():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(C, D, generator=g)
    clean = torch.arange(N) % C
    x = centres[clean] + torch.randn(N, D, generator=g)
    noisy = clean.clone()
    flip = torch.randperm(N, generator=g)[:24]
    noisy[flip] = (noisy[flip] + 1) % C
    return x, noisy, clean


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_callback_and_metric_log_through_the_trainer(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    x, noisy, clean = _data()
    train = DataLoader(TensorDataset(x, noisy), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(2))
    evaluation = DataLoader(TensorDataset(x, noisy, clean), batch_size=64)
    cb = NeuralCollapseCallback(evaluation, every_n_epochs=1)
    model = Tiny(C, D)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="nc"),
                        callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Lightning's advice on num_workers etc.
        trainer.fit(model, train, val_dataloaders=evaluation)
    rows = _rows(trainer.logger.log_dir + "/metrics.csv")

    nc_rows = [r for r in rows if r.get("train/nc1")]
    assert [int(r["epoch"]) for r in nc_rows] == [0, 1]  # both epochs, Lightning's 0-based epoch column
    last = nc_rows[-1]
    # the last measurement is of the final model: recompute it directly
    ref = nclab.collect(model, evaluation).values
    for key in ("nc1", "nc2_etf_error_means", "nc3_zhu", "nc4_ncc_mismatch", "memorization", "dilation",
                "accuracy_clean"):
        assert float(last[f"train/{key}"]) == pytest.approx(ref[key], rel=1e-6), key
    assert "train/num_classes" not in last  # a constant: once, in hparams.yaml
    assert "train/num_classes" in open(trainer.logger.log_dir + "/hparams.yaml").read()
    assert cb.last_epoch == 2 and cb.last_result.values["memorization"] == pytest.approx(ref["memorization"])

    # the torchmetrics metric, accumulated in validation_step and logged with log_dict
    val_rows = [r for r in rows if r.get("val_nc/nc1")]
    assert len(val_rows) == 2
    feats = model.body(x).detach()
    ref_val = nc_metrics(feats.numpy(), noisy.numpy(), weight=model.fc.weight.detach().numpy(),
                         bias=model.fc.bias.detach().numpy(), clean_labels=clean.numpy()).values
    for key in ("nc1", "nc3_zhu", "accuracy", "realized_noise_rate"):
        assert float(val_rows[-1][f"val_nc/{key}"]) == pytest.approx(ref_val[key], rel=1e-6), key
    # the metric's states travel in the module's state_dict (checkpoints)
    assert "val_nc.feature_moments" in model.state_dict()


def test_epoch_selection_and_errors():
    cb = NeuralCollapseCallback(None, epochs=[1, 5])
    assert [e for e in range(1, 8) if cb._due(e)] == [1, 5]
    cb = NeuralCollapseCallback(None, every_n_epochs=3)
    assert [e for e in range(1, 8) if cb._due(e)] == [3, 6]
    with pytest.raises(ValueError, match="every_n_epochs"):
        NeuralCollapseCallback(None, every_n_epochs=0)
    with pytest.raises(ValueError, match="1-based"):
        NeuralCollapseCallback(None, epochs=[0])
