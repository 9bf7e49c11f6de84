"""nclab.collect: capture of any model's classifier input, per-layer metrics, hooks, modes, CLI."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import typer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from nclab.collect import collect, collect_layers, default_layers, features_of, find_final_linear
from nclab.metrics import nc_metrics
from nclab.models import build_model

KEYS = ("nc1", "nc1_logits", "nc2_etf_error_means", "nc2_orthogonal_error_weights", "nc3_zhu", "nc4_ncc_mismatch",
        "accuracy", "ece", "cdnv", "memorization", "dilation")


def _data(n=240, C=3, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    patterns = 2.0 * torch.randn(C, *shape, generator=g)  # class-specific images: means in general position
    x = torch.randn(n, *shape, generator=g) + patterns[y]
    yc = y.clone()
    flip = torch.arange(n) % 7 == 0
    y_noisy = torch.where(flip, (y + 1) % C, y)
    return x, y_noisy, yc


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _assert_same(a: dict, b: dict, keys=KEYS, rel=1e-9):
    for k in keys:
        if a[k] is None or b[k] is None:
            assert a[k] is b[k] is None, k
        else:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-12), k


@pytest.mark.parametrize("name,opts", [("mlp", dict(depth=2, width=32, feature_dim=8)), ("cnn", dict(width=4, feature_dim=6, activation="leaky_relu"))])
def test_capture_equals_forward_features_and_metrics_equal_nc_metrics(name, opts):
    model = build_model(name, input_shape=(1, 8, 8), num_classes=3, seed=1, **opts)
    x, y, yc = _data()
    model.train()
    res = collect(model, (x, y, yc), batch_size=50)
    assert model.training  # mode restored
    assert res.info["layer"] == "classifier"
    with torch.no_grad():
        model.eval()
        z, h = model.forward_features(x)
        model.train()
    f = features_of(model, (x, y), batch_size=64)
    np.testing.assert_allclose(f["features"], h.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(f["logits"], z.numpy(), rtol=0, atol=1e-6)
    ref = nc_metrics(h, y, weight=model.classifier.weight.detach(), bias=model.classifier.bias.detach(),
                     logits=z, clean_labels=yc)
    _assert_same(res.to_dict(), ref.to_dict())


def test_shuffled_loader_without_cache_gives_same_metrics_in_two_passes():
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, depth=2, width=16, seed=2)
    x, y, yc = _data()
    base = collect(model, (x, y, yc))
    g = torch.Generator().manual_seed(5)
    dl = DataLoader(TensorDataset(x, y, yc), batch_size=33, shuffle=True, generator=g)
    res = collect(model, dl, cache_bytes=0)
    assert res.info["data_passes"] == 2 and base.info["data_passes"] == 1
    # other batch compositions change float32 forward results in the last bits only
    _assert_same(res.to_dict(), base.to_dict(), rel=1e-5)
    with pytest.raises(ValueError, match="shuffles"):
        collect(model, dl, per_sample=True)


def _frame_net(C=3, extra=3):
    sel = nn.Linear(C + extra, C, bias=False)
    with torch.no_grad():
        sel.weight.zero_()
        sel.weight[:, :C] = 2.0 * torch.eye(C)
    fc = nn.Linear(C, C)
    return nn.Sequential(OrderedDict(inp=nn.Identity(), select=sel, relu=nn.ReLU(), fc=fc))


def _frame_data(n=150, C=3):
    # x = [e_y, e_y + noise]: the class-mean directions carry within-class noise in the second
    # block; the "select" layer reads only the first block, so its output is exactly 2·e_y
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % C
    e = nn.functional.one_hot(y, C).float()
    x = torch.cat([e, e + 0.5 * torch.randn(n, C, generator=g)], dim=1)
    return x, y


@pytest.mark.parametrize("max_dim", [1024, 2])  # full scatter (one pass) and projected (two passes)
def test_layers_with_known_geometry(max_dim):
    net = _frame_net()
    x, y = _frame_data()
    res = collect_layers(net, (x, y), layers=["inp", "relu"], batch_size=40, full_scatter_max_dim=max_dim)
    assert list(res) == ["inp", "relu"]
    collapsed = res["relu"]
    # output is exactly 2·e_y: no within-class spread, uncentred means an orthogonal frame,
    # centred means a simplex ETF
    assert collapsed["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert collapsed["nc2_orthogonal_error_means"] == pytest.approx(0.0, abs=1e-12)
    assert collapsed["nc2_etf_error_means"] == pytest.approx(0.0, abs=1e-12)
    assert res["inp"]["nc1"] > 0.1  # the raw input still carries the noise coordinates
    assert collapsed.info["within"] == ("full" if max_dim == 1024 else "projected")
    ref = nc_metrics(x, y)  # layer "inp" is the input itself
    assert res["inp"]["nc1"] == pytest.approx(ref["nc1"], rel=1e-9)
    assert _hooks(net) == 0


def test_collect_with_layers_reports_depth_profile_and_finds_classifier():
    net = _frame_net()
    x, y = _frame_data()
    res = collect(net, (x, y), layers=["inp", "relu"], full_scatter_max_dim=2, cache_bytes=0)
    assert res.info["layer"] == "fc"
    prof = res.info["layers"]
    assert prof["relu"]["nc1"] == pytest.approx(0.0, abs=1e-12) and prof["inp"]["nc1"] > 0.1
    assert res["nc1"] == pytest.approx(0.0, abs=1e-12)  # classifier input = relu output
    assert _hooks(net) == 0


def test_hooks_removed_and_modes_restored_on_error():
    net = _frame_net()
    net.train()
    net.relu.eval()  # a mixed state must come back as it was
    x, y = _frame_data()
    bad = y.clone()
    bad[100] = 7  # out of range for 3 logits: the metric engine raises mid-stream
    with pytest.raises(ValueError, match="labels"):
        collect(net, (x, bad), layers=["inp"], batch_size=40)
    assert _hooks(net) == 0
    assert net.training and net.select.training and not net.relu.training
    with pytest.raises(ValueError, match="labels"):
        collect_layers(net, (x, bad), layers=["inp", "relu"], batch_size=40)
    assert _hooks(net) == 0
    assert net.training and not net.relu.training


def test_model_output_forms_and_errors():
    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.aux = nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"logits": self.head(h), "h": h}

    net = TupleNet()
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60) % 3
    # "aux" is the last Linear with 3 outputs in module order but never called
    with pytest.raises(ValueError, match="not called"):
        collect(net, (x, y))
    res = collect(net, (x, y), layer="head")
    assert res.info["layer"] == "head"
    assert find_final_linear(net, 3) == ("aux", net.aux)
    with pytest.raises(ValueError, match="out_features == 7"):
        find_final_linear(net, 7)
    with pytest.raises(TypeError, match="not nn.Linear"):
        collect(net, (x, y), layer="")
    with pytest.raises(TypeError, match="one-shot"):
        collect(net, ((x[i : i + 10], y[i : i + 10]) for i in range(0, 60, 10)), layer="head")
    with pytest.raises(ValueError, match="no module"):
        collect_layers(net, (x, y), layers=["nope"])
    assert _hooks(net) == 0


def test_default_layers_lists_activations():
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, depth=3, width=8)
    assert default_layers(model) == ["body.3", "body.6", "body.9"]


# ------------------------------------------------------------------------------------ CLI
def _app():
    from nclab.cli import analyze

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    analyze.register(app)
    return app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from nclab.train import TrainConfig, train

    d = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.from_dict({"epochs": 2, "seed": 0, "device": "cpu",
                                 "dataset": {"name": "digits", "classes": 3, "per_class": 40},
                                 "noise": {"kind": "symmetric", "rate": 0.2, "exact": True},
                                 "model": {"depth": 2, "width": 32, "feature_dim": 6}})
    train(cfg, run_dir=d, progress=False)
    return d


def test_analyze_cli_on_run_dir(tiny_run, tmp_path):
    r = CliRunner().invoke(_app(), ["analyze", str(tiny_run), "--json", "--out", str(tmp_path / "fig")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["classifier_layer"] == "classifier"
    assert out["metrics"]["n_samples"] == 120 and out["metrics"]["realized_noise_rate"] == pytest.approx(0.2, abs=0.01)
    assert list(out["layers"]) == ["body.3", "body.6"]
    assert (tmp_path / "fig" / "features.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "layers.png").stat().st_size > 1000


def test_analyze_library_on_run_dir(tiny_run, tmp_path):
    from nclab.collect.analyze import analyze
    from nclab.report.analysis import write_figures

    a = analyze(tiny_run, layers=["body.3"])
    assert a.result.info["layer"] == "classifier" and list(a.per_layer) == ["body.3"]
    assert a.to_dict()["metrics"]["n_samples"] == 120 and a.note is None
    assert a.scatter_data(max_samples=50)["features"].shape == (50, 6)
    (tmp_path / "fig").mkdir()
    assert [p.name for p in write_figures(a, tmp_path / "fig")] == ["features.png", "layers.png"]
    with pytest.raises(ValueError, match="drop --model"):
        analyze(tiny_run, model="mlp")
    with pytest.raises(ValueError, match="split must be train or test"):
        analyze(tiny_run, split="val")


def test_analyze_cli_state_dict_with_model_class(tmp_path):
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, depth=2, width=16, seed=4)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    kwargs = json.dumps({"input_shape": [1, 8, 8], "num_classes": 3, "depth": 2, "width": 16})
    r = CliRunner().invoke(_app(), ["analyze", str(tmp_path / "w.pt"), "--model-class", "nclab.models.mlp:MLP",
                                    "--model-kwargs", kwargs, "--dataset", "digits", "--classes", "3",
                                    "--layers", "body.3"])
    assert r.exit_code == 0, r.output
    assert "nc1" in r.output and "body.3" in r.output
    r = CliRunner().invoke(_app(), ["analyze", str(tmp_path / "w.pt"), "--dataset", "digits"])
    assert r.exit_code == 2 and "--model" in r.output
    r = CliRunner().invoke(_app(), ["analyze", str(tmp_path / "w.pt"), "--model-class", "nclab.models.mlp:Nope",
                                    "--dataset", "digits"])
    assert r.exit_code == 2 and "cannot import" in r.output


def test_package_is_callable_as_nclab_collect():
    import nclab.collect as pkg

    net = _frame_net()
    x, y = _frame_data()
    assert pkg(net, (x, y))["nc1"] == collect(net, (x, y))["nc1"]
