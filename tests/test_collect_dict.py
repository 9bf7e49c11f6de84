"""nclab.collect with dict batches (Hugging Face style): input_key / label_key / clean_label_key."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nclab.collect import collect, collect_layers, features_of


class _DictData(Dataset):
    def __init__(self, x, y, yc):
        self.x, self.y, self.yc = x, y, yc

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i], "clean_labels": self.yc[i], "id": i}


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=g)
    yc = torch.arange(90) % 3
    y = yc.clone()
    y[::10] = (y[::10] + 1) % 3
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, x, y, yc


def test_dict_batches_give_the_tuple_results(setup):
    model, x, y, yc = setup
    loader = DataLoader(_DictData(x, y, yc), batch_size=16)
    res = collect(model, loader, input_key="pixel_values", layers=["1"])
    ref = collect(model, (x, y, yc), layers=["1"])
    for key in ("nc1", "nc2_etf_error_means", "nc3_zhu", "nc4_ncc_mismatch", "memorization", "dilation"):
        assert res[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert res.info["layers"]["1"]["nc1"] == pytest.approx(ref.info["layers"]["1"]["nc1"], rel=1e-9)
    prof = collect_layers(model, loader, layers=["1"], input_key="pixel_values")
    assert prof["1"]["nc1"] == pytest.approx(ref.info["layers"]["1"]["nc1"], rel=1e-9)
    f = features_of(model, loader, input_key="pixel_values")
    assert f["features"].shape == (90, 8) and (f["clean_labels"] == yc.numpy()).all()


def test_dict_batches_with_other_label_key_and_errors(setup):
    model, x, y, yc = setup
    batches = [{"inp": x[i : i + 30], "target": y[i : i + 30]} for i in range(0, 90, 30)]
    res = collect(model, batches, input_key="inp", label_key="target")
    assert res["nc1"] == pytest.approx(collect(model, (x, y))["nc1"], rel=1e-9)
    with pytest.raises(TypeError, match=r"keys 'inp', 'target'.*input_key="):
        collect(model, batches)
    with pytest.raises(KeyError, match="no label_key 'labels'"):
        collect(model, batches, input_key="inp")
    with pytest.raises(KeyError, match="no input_key 'x'"):
        collect(model, batches, input_key="x", label_key="target")
