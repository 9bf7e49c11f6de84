"""Own data and models: the npz dataset, register_dataset/register_model, train(dataset=, model=),
detect/analyze from the run dir alone, and dataset.classes without a silent default."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from nclab.data import DATASETS, ArrayDataset, DataFormatError, DataNotFoundError, from_arrays, load_dataset, register_dataset
from nclab.models import MODELS, FeatureAdapter, build_model, register_model
from nclab.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _blobs(n_per=40, C=3, d=6, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(C, d)) * 4
    y = np.repeat(np.arange(C), n_per)
    return (centres[y] + g.normal(size=(len(y), d))).astype(np.float32), y


def _cfg(**extra):
    base = {"epochs": 3, "batch_size": 32, "device": "cpu", "seed": 0, "record_dynamics": True,
            "model": {"name": "mlp", "depth": 2, "width": 32}, "optim": {"lr": 0.05}}
    return TrainConfig.from_dict({**base, **extra})


def _app():
    from nclab.cli import _register_all, app

    _register_all()
    return app


# --------------------------------------------------------------------------------- npz
def test_npz_dataset_reads_arrays_and_holds_out_a_fixed_test_split(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    a = load_dataset("npz", path=tmp_path / "d.npz")
    b = load_dataset("npz", path=tmp_path / "d.npz", seed=7)
    assert a.num_classes == 3 and a.class_names == ["a", "b", "c"] and a.input_shape == (6,)
    assert a.train_x.shape[0] + a.test_x.shape[0] == 120 and a.test_x.shape[0] == 24  # 20 % held out
    assert torch.equal(a.test_x, b.test_x)  # the split does not depend on the run's seed
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    np.savez(tmp_path / "t.npz", x=x, y=y, x_test=x[::13], y_test=y[::13])
    t = load_dataset("npz", path=tmp_path / "t.npz", classes=[2, 0])
    assert t.train_x.shape[0] == 80 and t.num_classes == 2 and set(t.test_y.tolist()) <= {0, 1}


@pytest.mark.parametrize("arrays,match", [
    (lambda x, y: {"x": x}, "missing array 'y'"),
    (lambda x, y: {"x": x, "y": y[:-1]}, "y has 119 entries but the inputs have 120 rows"),
    (lambda x, y: {"x": x[:, 0], "y": y}, "one row per sample"),
    (lambda x, y: {"x": x, "y": y.astype(float)}, "integer class ids"),
    (lambda x, y: {"x": x, "y": y, "x_test": x}, "both x_test and y_test"),
    (lambda x, y: {"x": x, "y": y, "x_test": x[:, :2], "y_test": y}, "x_test rows have shape"),
    (lambda x, y: {"x": x, "y": y, "clean_y": y[:3]}, "clean_y has 3 entries"),
    (lambda x, y: {"x": x, "y": y, "weights": y}, "unknown array"),
    (lambda x, y: {"x": np.where(x > 0, np.nan, x), "y": y}, "NaN"),
])
def test_npz_errors_name_the_array(tmp_path, arrays, match):
    x, y = _blobs()
    np.savez(tmp_path / "bad.npz", **arrays(x, y))
    with pytest.raises(DataFormatError, match=match):
        load_dataset("npz", path=tmp_path / "bad.npz")


def test_npz_file_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a file"):
        load_dataset("npz")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a readable"):
        load_dataset("npz", path=tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataFormatError, match="plain arrays"):
        load_dataset("npz", path=tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="reads no path"):
        load_dataset("digits", path=tmp_path / "obj.npz")
    x, y = _blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(ValueError, match="used as given"):
        load_dataset("npz", path=tmp_path / "d.npz", preprocess="paper")


def test_npz_end_to_end_train_then_detect_and_analyze_from_the_run_dir(tmp_path):
    x, y = _blobs(n_per=50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = _cfg(dataset={"name": "npz", "path": str(tmp_path / "d.npz")},
               noise={"kind": "symmetric", "rate": 0.2, "exact": True})
    res = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert res.status == "completed" and res.final["test_acc"] > 0.8
    r = CliRunner().invoke(_app(), ["detect", str(tmp_path / "run"), "--out", str(tmp_path / "s.csv"), "--top", "0"])
    assert r.exit_code == 0, r.output
    assert "AUROC" in r.output and "flagged" in r.output
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 120 and sum(int(r["is_mislabeled"]) for r in rows) == 24
    r = CliRunner().invoke(_app(), ["analyze", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["metrics"]["num_classes"] == 3


# ------------------------------------------------------------------- classes default
def test_classes_default_is_all_classes_and_shipped_configs_set_it():
    assert TrainConfig().dataset.classes is None
    assert load_dataset("digits").num_classes == 10
    found = 0
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        ds = doc.get("dataset") or (doc.get("base") or {}).get("dataset")
        if ds is not None:
            assert ds.get("classes") is not None, f"{path} relies on the dataset.classes default"
            found += 1
    assert found >= 2
    from nclab.demo import DEMO_DATASETS, demo_config

    for name in DEMO_DATASETS:
        cfg = TrainConfig.from_dict(demo_config(name, loss="ce", alpha=0.1, noise_rate=0.2, seed=0, epochs=1))
        assert cfg.dataset.classes in (2, [0, 1])  # the demo's binary task, stated explicitly


# ------------------------------------------------------------------ register_dataset
def test_register_dataset_then_train_and_detect_without_the_registration(tmp_path, monkeypatch):
    x, y = _blobs()
    calls = []

    def loader(*, seed, shift=0.0):
        calls.append(seed)
        return ArrayDataset(x=x + shift, y=y, class_names=["p", "q", "r"])

    monkeypatch.setitem(DATASETS, "probe", None)  # removed again after the test
    DATASETS.pop("probe")
    register_dataset("probe", loader)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("probe", loader)
    with pytest.raises(ValueError, match="built-in"):
        register_dataset("digits", loader)
    ds = load_dataset("probe", options={"shift": 1.0}, seed=3)
    assert calls == [3] and ds.class_names == ["p", "q", "r"]
    np.testing.assert_allclose(ds.train_x.mean().item(), x.mean() + 1.0, atol=0.2)
    cfg = _cfg(dataset={"name": "probe", "classes": 2}, noise={"kind": "symmetric", "rate": 0.2, "exact": True})
    assert train(cfg, run_dir=tmp_path / "run", progress=False).status == "completed"
    DATASETS.pop("probe")  # as in a fresh process: detect/analyze must not need the loader
    r = CliRunner().invoke(_app(), ["detect", str(tmp_path / "run"), "--top", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(_app(), ["analyze", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "stored final features" in " ".join(r.output.split())


# -------------------------------------------------------------------- register_model
class _Net(nn.Module):
    def __init__(self, *, input_shape, num_classes, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return {"logits": self.head(self.body(x))}


def test_register_model_builds_seeded_adapted_models(monkeypatch):
    monkeypatch.setitem(MODELS, "probenet", None)
    MODELS.pop("probenet")
    register_model("probenet", _Net)
    a = build_model("probenet", input_shape=(6,), num_classes=3, seed=1, hidden=5)
    b = build_model("probenet", input_shape=(6,), num_classes=3, seed=1, hidden=5)
    assert isinstance(a, FeatureAdapter) and a.classifier.out_features == 3
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # from the generator
    z, h = a.forward_features(torch.zeros(4, 6))
    assert z.shape == (4, 3) and h.shape == (4, 5)
    with pytest.raises(ValueError, match="does not take"):
        build_model("probenet", input_shape=(6,), num_classes=3, width=2)
    with pytest.raises(ValueError, match="built-in"):
        register_model("mlp", _Net)

    def with_gen(*, input_shape, num_classes, generator):
        torch.manual_seed(0)  # the factory owns its init; nclab passes the generator
        return _Net(input_shape=input_shape, num_classes=num_classes)

    register_model("probenet", with_gen, overwrite=True)
    assert TrainConfig.from_dict({"model": {"name": "probenet"}}).model.options() == {}
    assert isinstance(build_model("probenet", input_shape=(6,), num_classes=3), FeatureAdapter)


# ----------------------------------------------------------- train(dataset=, model=)
def test_train_with_python_data_and_model_then_detect_from_the_run_dir(tmp_path):
    from nclab.collect.rebuild import load_run

    x, y = _blobs(n_per=50)
    g = np.random.default_rng(1)
    noisy = y.copy()
    flip = g.random(len(y)) < 0.2
    noisy[flip] = (y[flip] + 1) % 3
    data = ArrayDataset(x=x, y=noisy, clean_y=y)
    torch.manual_seed(0)
    net = _Net(input_shape=(6,), num_classes=3, hidden=16)
    cfg = _cfg(epochs=4)
    res = train(cfg, run_dir=tmp_path / "run", progress=False, dataset=data, model=net)
    assert res.status == "completed"
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["data"]["source"] == "python" and env["data"]["model"] == "python: _Net"
    assert net.head.weight.grad is not None  # the instance itself was trained
    # the run's own labels: 20 % of the held-out test split keeps clean labels, noise is the data's own
    noise = np.load(tmp_path / "run" / "noise.npz")
    assert 0.1 < float((noise["noisy"] != noise["clean"]).mean()) < 0.3
    r = CliRunner().invoke(_app(), ["detect", str(tmp_path / "run"), "--top", "0"])
    assert r.exit_code == 0 and "AUROC" in r.output, r.output
    with pytest.raises(ValueError, match="in-memory data"):
        load_run(tmp_path / "run")
    # data with their own noise take no injected noise
    with pytest.raises(ValueError, match="own noisy labels"):
        train(_cfg(noise={"kind": "symmetric", "rate": 0.1}), run_dir=tmp_path / "r2", progress=False, dataset=data)


def test_model_factory_without_generator_is_initialised_from_the_seed(tmp_path):
    x, y = _blobs()
    runs = [train(_cfg(epochs=1, record_dynamics=False), run_dir=tmp_path / f"r{i}", progress=False,
                  dataset=(x, y), model=lambda *, input_shape, num_classes: _Net(input_shape=input_shape,
                                                                               num_classes=num_classes))
            for i in range(2)]
    assert runs[0].final["train_loss"] == runs[1].final["train_loss"]


def test_from_arrays_validates_like_load_dataset():
    x, y = _blobs()
    s = from_arrays({"x": x, "y": y}, classes=2, per_class=10, seed=0)
    assert s.num_classes == 2 and s.train_x.shape[0] == 20
    with pytest.raises(TypeError, match="ArrayDataset"):
        from_arrays(x)
