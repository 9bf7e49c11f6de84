"""Data layer: loaders on fabricated files in the real formats, downloads, splits, presets, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import nclab.data.registry as registry
from nclab.data import (
    DATASETS,
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    clear_cache,
    load_dataset,
    read_idx,
    subsample_per_class,
    train_val_split,
)
from nclab.data.preprocess import NATIVE_STATS, PAPER_COLOUR, PAPER_GREY
from nclab.data.registry import Resource

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test sees the user's cache or the system copy unless it asks for it."""
    monkeypatch.setenv("NCLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {"fashion-mnist": tmp_path / "no-system-copy"})
    clear_cache()
    yield
    clear_cache()


# ------------------------------------------------------------------ fabricated files
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx_dataset(d: Path, *, n_train=40, n_test=20, classes=10, gz=True, seed=0) -> dict:
    """Write MNIST-layout IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        for kind, arr, dims in (("images", x, 3), ("labels", y, 1)):
            name = f"{split}-{kind}-idx{dims}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (d / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (d / name).write_bytes(data)
        out[split] = (x, y)
    return out


def make_cifar(path: Path, *, per_batch=10, as_dir=False, seed=0) -> dict:
    """CIFAR-10 python batches (dicts with bytes keys, data (n, 3072) uint8) in a tar.gz or a folder."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        files[name] = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": []}, protocol=2)
        arrays[name] = (x, y)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    if as_dir:
        d = path / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for k, v in files.items():
            (d / k).write_bytes(v)
    else:
        path.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path / "cifar-10-python.tar.gz", "w:gz") as tar:
            for k, v in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{k}")
                info.size = len(v)
                tar.addfile(info, io.BytesIO(v))
    return arrays


def make_svhn(d: Path, *, n_train=30, n_test=12, seed=0) -> dict:
    import scipy.io

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 = digit 0
        scipy.io.savemat(d / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def unnormalize(x: torch.Tensor, dataset: str) -> np.ndarray:
    mean, std = NATIVE_STATS[dataset]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m).numpy()


# ---------------------------------------------------------------------------- digits
def test_digits_loads_real_data():
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1347, 1, 8, 8) and ds.test_x.shape == (450, 1, 8, 8)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    # native standardization with the documented constants: ~zero mean, unit std
    assert abs(ds.train_x.mean().item()) < 0.05 and abs(ds.train_x.std().item() - 1) < 0.05
    # stratified split: every class present in both, proportions within one sample of 25%
    full = np.bincount(np.concatenate([ds.train_y.numpy(), ds.test_y.numpy()]))
    assert np.all(np.abs(np.bincount(ds.test_y.numpy()) - 0.25 * full) <= 1)


def test_digits_classes_relabel_and_split_independent_of_seed():
    a = load_dataset("digits", classes=2, seed=0)
    b = load_dataset("digits", classes=2, seed=5)
    torch.testing.assert_close(a.test_x, b.test_x)  # same test set whatever the run seed
    assert a.num_classes == 2 and set(a.train_y.tolist()) == {0, 1}
    full = load_dataset("digits")
    # class list [7, 3] -> 7 becomes 0, 3 becomes 1; the images are the original ones
    c = load_dataset("digits", classes=[7, 3])
    assert c.class_names == ["7", "3"]
    torch.testing.assert_close(c.train_x[c.train_y == 0], full.train_x[full.train_y == 7])
    torch.testing.assert_close(c.test_x[c.test_y == 1], full.test_x[full.test_y == 3])


def test_per_class_subsampling_is_seeded_and_capped():
    a = load_dataset("digits", per_class=20, seed=1)
    b = load_dataset("digits", per_class=20, seed=1)
    c = load_dataset("digits", per_class=20, seed=2)
    assert np.bincount(a.train_y.numpy()).tolist() == [20] * 10
    torch.testing.assert_close(a.train_x, b.train_x)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.test_x.shape[0] == 450  # test set is never subsampled
    big = load_dataset("digits", classes=2, per_class=10_000)
    assert big.meta["counts"]["train_per_class"] == [134, 136]


def test_subsample_and_split_helpers():
    y = np.repeat(np.arange(3), [100, 50, 7])
    idx = subsample_per_class(y, per_class=10, generator=np.random.default_rng(0))
    assert np.bincount(y[idx]).tolist() == [10, 10, 7] and np.all(np.diff(idx) > 0)
    tr, va = train_val_split(y, fraction=0.2, generator=np.random.default_rng(0))
    assert np.bincount(y[va]).tolist() == [20, 10, 1]  # round(0.2 * n_c)
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == y.size
    tr2, va2 = train_val_split(torch.from_numpy(y), fraction=0.2, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(va, va2)
    tr3, va3 = train_val_split(y, fraction=0.2, generator=np.random.default_rng(0), stratified=False)
    assert va3.size == round(0.2 * y.size)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        train_val_split(y, fraction=1.0, generator=np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        train_val_split(y, fraction=0.2, generator=0)


# ---------------------------------------------------------------------------- presets
def test_paper_preset_grey_to_three_channels_and_constants():
    nat = load_dataset("digits", classes=2)
    pap = load_dataset("digits", classes=2, preprocess="paper")
    assert pap.train_x.shape[1:] == (3, 32, 32) and pap.input_shape == (3, 32, 32)
    torch.testing.assert_close(pap.train_x[:, 0], pap.train_x[:, 2])  # replicated grey
    # undo the paper normalization and compare with a bilinear resize of the [0,1] image
    x01 = unnormalize(nat.train_x, "digits")
    up = torch.nn.functional.interpolate(torch.from_numpy(x01), size=(32, 32), mode="bilinear", align_corners=False)
    m, s = PAPER_GREY
    torch.testing.assert_close(pap.train_x[:, :1] * s[0] + m[0], up, atol=1e-5, rtol=0)
    assert pap.meta["preprocessing"]["resize"]["antialias"] is False


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(ValueError, match="digits, fashion-mnist"):
        load_dataset("imagenet")
    assert load_dataset("Fashion_MNIST".replace("Fashion_MNIST", "digits")).name == "digits"
    with pytest.raises(ValueError, match="preset"):
        load_dataset("digits", preprocess="imagenet")
    with pytest.raises(ValueError, match="between 2 and 10"):
        load_dataset("digits", classes=11)
    with pytest.raises(ValueError, match="duplicates"):
        load_dataset("digits", classes=[1, 1])
    with pytest.raises(ValueError, match=r"class id 10"):
        load_dataset("digits", classes=[0, 10])
    with pytest.raises(ValueError, match="per_class"):
        load_dataset("digits", per_class=0)
    with pytest.raises(ValueError, match="did you mean 'separation'"):
        load_dataset("synthetic", options={"seperation": 3})
    assert {"digits", "fashion-mnist", "mnist", "cifar10", "svhn", "synthetic", "npz"} <= set(DATASETS)


# -------------------------------------------------------------------------- synthetic
def _ncc_accuracy(ds) -> float:
    X, y = ds.train_x.flatten(1), ds.train_y
    mu = torch.stack([X[y == c].mean(0) for c in range(ds.num_classes)])
    pred = torch.cdist(ds.test_x.flatten(1), mu).argmin(1)
    return (pred == ds.test_y).float().mean().item()


def test_synthetic_is_seeded_and_separation_controls_difficulty():
    a = load_dataset("synthetic", seed=3, options={"num_classes": 3, "train_per_class": 50})
    b = load_dataset("synthetic", seed=3, options={"num_classes": 3, "train_per_class": 50})
    c = load_dataset("synthetic", seed=4, options={"num_classes": 3, "train_per_class": 50})
    torch.testing.assert_close(a.train_x, b.train_x)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (150, 1, 8, 8) and a.num_classes == 3
    easy = load_dataset("synthetic", options={"separation": 8.0})
    hard = load_dataset("synthetic", options={"separation": 0.0})
    assert _ncc_accuracy(easy) > 0.95 and _ncc_accuracy(hard) < 0.45  # chance is 0.25
    p = load_dataset("synthetic", preprocess="paper", options={"shape": [1, 4, 4]})
    assert p.train_x.shape[1:] == (3, 32, 32)


# ------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_reads_fabricated_files(tmp_path, name, gz):
    written = make_idx_dataset(tmp_path / "data" / name, gz=gz)
    ds = load_dataset(name, data_dir=tmp_path / "data")
    assert ds.train_x.shape == (40, 1, 28, 28) and ds.test_x.shape == (20, 1, 28, 28)
    np.testing.assert_allclose(unnormalize(ds.train_x, name)[:, 0], written["train"][0] / 255.0, atol=1e-5)
    np.testing.assert_array_equal(ds.test_y.numpy(), written["t10k"][1])
    assert ds.meta["origin"] == "data_dir" and ds.meta["counts"]["original_train"] == 40
    if name == "fashion-mnist":
        assert ds.class_names[:2] == ["T-shirt/top", "Trouser"]


def test_idx_found_in_torchvision_layout_and_cache(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "tv" / "MNIST" / "raw")
    assert load_dataset("mnist", data_dir=tmp_path / "tv").meta["source"].endswith("MNIST/raw")
    make_idx_dataset(tmp_path / "cache" / "fashion-mnist", n_train=30)  # NCLAB_DATA=tmp/cache
    ds = load_dataset("fashion-mnist")
    assert ds.meta["origin"] == "cache" and ds.train_x.shape[0] == 30


def test_parsed_cache_reparses_changed_files(tmp_path):
    d = tmp_path / "data" / "mnist"
    make_idx_dataset(d, seed=0)
    a = load_dataset("mnist", data_dir=tmp_path / "data")
    written = make_idx_dataset(d, n_train=50, seed=1)  # new content, new size
    b = load_dataset("mnist", data_dir=tmp_path / "data")
    assert a.train_x.shape[0] == 40 and b.train_x.shape[0] == 50
    np.testing.assert_allclose(unnormalize(b.train_x, "mnist")[:, 0], written["train"][0] / 255.0, atol=1e-5)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b"\x00\x00\x07\x03" + b[4:], "bad magic"),
        (lambda b: b[: len(b) - 100], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path, damage, match):
    d = tmp_path / "data" / "mnist"
    make_idx_dataset(d, gz=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(DataFormatError, match=match) as e:
        load_dataset("mnist", data_dir=tmp_path / "data")
    assert str(f) in str(e.value)


def test_truncated_gzip_and_count_mismatch(tmp_path):
    d = tmp_path / "data" / "mnist"
    make_idx_dataset(d, gz=True)
    g = d / "train-labels-idx1-ubyte.gz"
    good = g.read_bytes()
    g.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFormatError, match="gzip") as e:
        load_dataset("mnist", data_dir=tmp_path / "data")
    assert "train-labels-idx1-ubyte.gz" in str(e.value)
    g.write_bytes(gzip.compress(idx_bytes(np.zeros(39, dtype=np.uint8))))
    with pytest.raises(DataFormatError, match="40 images but .* 39 labels"):
        load_dataset("mnist", data_dir=tmp_path / "data")
    assert read_idx(d / "t10k-labels-idx1-ubyte.gz").shape == (20,)


# ----------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("as_dir", [False, True])
def test_cifar10_reads_fabricated_batches(tmp_path, as_dir):
    arrays = make_cifar(tmp_path / "data", as_dir=as_dir)
    ds = load_dataset("cifar10", data_dir=tmp_path / "data")
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    x1, y1 = arrays["data_batch_1"]
    raw = unnormalize(ds.train_x[:10], "cifar10")
    # row layout of a batch: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    np.testing.assert_allclose(raw[0, 1, 2, 3], x1[0, 1024 + 2 * 32 + 3] / 255.0, atol=1e-5)
    np.testing.assert_allclose(raw, x1.reshape(10, 3, 32, 32) / 255.0, atol=1e-5)
    assert ds.train_y[:10].tolist() == y1 and ds.class_names[0] == "airplane"
    pap = load_dataset("cifar10", data_dir=tmp_path / "data", preprocess="paper", classes=[3, 5])
    m, s = PAPER_COLOUR
    assert pap.input_shape == (3, 32, 32) and pap.class_names == ["cat", "dog"]
    x = pap.train_x * torch.tensor(s).view(1, 3, 1, 1) + torch.tensor(m).view(1, 3, 1, 1)
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5  # undone normalization lands in [0, 1]


def test_cifar_refuses_arbitrary_pickles_and_bad_archives(tmp_path):
    d = tmp_path / "data" / "cifar-10-batches-py"
    make_cifar(tmp_path / "data", as_dir=True)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": print, b"labels": []}, protocol=2))
    with pytest.raises(DataFormatError, match=r"data_batch_3.*refusing to load \w+\.print"):
        load_dataset("cifar10", data_dir=tmp_path / "data")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really a tar")
    with pytest.raises(DataFormatError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=bad)


# ------------------------------------------------------------------------------ SVHN
def test_svhn_reads_mat_and_maps_label_10_to_0(tmp_path):
    arrays = make_svhn(tmp_path / "data" / "svhn")
    ds = load_dataset("svhn", data_dir=tmp_path / "data")
    X, y = arrays["train"]
    assert ds.train_x.shape == (30, 3, 32, 32)
    assert ds.train_y.tolist() == [int(v) % 10 for v in y[:, 0]]
    assert (ds.train_y == 0).sum() == 3  # the three samples labelled 10
    raw = unnormalize(ds.train_x, "svhn")
    # X[h, w, c, i] -> x[i, c, h, w]
    np.testing.assert_allclose(raw[4, 2, 5, 7], X[5, 7, 2, 4] / 255.0, atol=1e-5)


def test_svhn_bad_mat(tmp_path):
    import scipy.io

    d = tmp_path / "data"
    make_svhn(d)
    scipy.io.savemat(d / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataFormatError, match=r"train_32x32.mat.*\(32, 32, 3, n\)"):
        load_dataset("svhn", data_dir=d)


# -------------------------------------------------------------------- not found / download
def test_missing_dataset_lists_every_place_and_remedies(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    msg = str(e.value)
    for where in (tmp_path / "mine", tmp_path / "mine" / "fashion-mnist", tmp_path / "cache" / "fashion-mnist", tmp_path / "no-system-copy"):
        assert str(where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg and "--data-dir" in msg
    partial = tmp_path / "mine"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match=r"missing train-labels-idx1-ubyte\[.gz\]"):
        load_dataset("fashion-mnist", data_dir=partial)


def _local_remote(monkeypatch, src: Path, *, corrupt_md5: bool = False) -> None:
    res = []
    for f in sorted(src.iterdir()):
        md5 = hashlib.md5(f.read_bytes()).hexdigest()
        if corrupt_md5 and f.name.startswith("train-labels"):
            md5 = "0" * 32
        res.append(Resource(f.name, md5, ("file:///nonexistent/mirror/" + f.name, f.as_uri())))
    monkeypatch.setitem(registry.REMOTE, "mnist", tuple(res))


def test_download_with_checksum_via_file_url(tmp_path, monkeypatch):
    written = make_idx_dataset(tmp_path / "server")
    _local_remote(monkeypatch, tmp_path / "server")
    ds = load_dataset("mnist", data_dir=tmp_path / "dl", download=True)  # first mirror fails, second works
    assert ds.meta["origin"] == "download"
    assert sorted(p.name for p in (tmp_path / "dl" / "mnist").iterdir()) == sorted(p.name for p in (tmp_path / "server").iterdir())
    np.testing.assert_array_equal(ds.train_y.numpy(), written["train"][1])
    # the downloaded copy is found afterwards without download=True
    assert load_dataset("mnist", data_dir=tmp_path / "dl").meta["origin"] == "data_dir"


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "server")
    _local_remote(monkeypatch, tmp_path / "server", corrupt_md5=True)
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz.*expected md5 0{32}"):
        load_dataset("mnist", download=True)  # into the cache (NCLAB_DATA)
    target = tmp_path / "cache" / "mnist"
    names = sorted(p.name for p in target.iterdir())
    assert not any("train-labels" in n for n in names)  # neither the file nor a temp part
    assert not any(n.endswith(".part") for n in names)


# ------------------------------------------------------------ Fashion-MNIST system copy
@pytest.mark.skipif(not SYSTEM_FMNIST.is_dir(), reason="system copy absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_system_copy(monkeypatch):
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {"fashion-mnist": SYSTEM_FMNIST})
    ds = load_dataset("fashion-mnist", classes=2, per_class=500)
    assert ds.meta["origin"] == "system" and ds.meta["counts"]["original_train"] == 60000
    assert ds.meta["counts"]["original_test"] == 10000
    assert ds.class_names == ["T-shirt/top", "Trouser"]
    assert ds.meta["counts"]["train_per_class"] == [500, 500] and ds.meta["counts"]["test_per_class"] == [1000, 1000]
    # a linear-ish sanity check on real data: nearest class centre separates shirts from trousers
    assert _ncc_accuracy(ds) > 0.85


def test_bundled_digits_read_directly_equal_load_digits():
    from sklearn.datasets import load_digits

    from nclab.data.registry import _bundled_digits

    flat, target = _bundled_digits()
    d = load_digits()
    np.testing.assert_array_equal(flat, d.data)
    np.testing.assert_array_equal(target, d.target)
