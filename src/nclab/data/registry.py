"""Dataset registry: find, read (once per process), subset, preprocess → in-memory tensors.

Where file-based datasets are looked for, in order (first complete copy wins):

1. ``data_dir`` itself, ``data_dir/<name>`` and torchvision's layout (``data_dir/MNIST/raw``,
   ``data_dir/FashionMNIST/raw``);
2. the user cache ``$NCLAB_DATA/<name>`` (default ``${XDG_CACHE_HOME:-~/.cache}/nclab/<name>``);
3. the Debian system copy (``/usr/share/datasets/fashion-mnist``, package ``dataset-fashion-mnist``);
4. with ``download=True`` only: the official URL, verified against its published MD5, written
   atomically to ``data_dir/<name>`` (or the user cache when no ``data_dir`` is given).

Local files are not checksummed: Debian recompresses the Fashion-MNIST ``.gz`` files (their MD5s
differ from upstream's while the content is the same), so local copies are validated by format
instead (IDX magic numbers, declared shapes, sample counts).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from nclab.data import preprocess as pp
from nclab.data.download import fetch
from nclab.data.errors import DataFormatError, DataNotFoundError
from nclab.data.formats import read_cifar10, read_idx_pair, read_svhn_mat
from nclab.data.split import subsample_per_class
from nclab.seeding import numpy_generator

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGIT_CLASSES = [str(i) for i in range(10)]

SYSTEM_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
APT_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}


@dataclass(frozen=True)
class Resource:
    """One published file: name, MD5 from the publisher, mirrors in the order tried."""

    filename: str
    md5: str
    urls: tuple[str, ...]


def _mirrored(bases: Sequence[str], names_md5: Sequence[tuple[str, str]]) -> tuple[Resource, ...]:
    return tuple(Resource(f, md5, tuple(b + f for b in bases)) for f, md5 in names_md5)


# Official URLs and MD5s (publishers' pages; the same values torchvision verifies).
REMOTE: dict[str, tuple[Resource, ...]] = {
    "mnist": _mirrored(
        ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        [
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ],
    ),
    "fashion-mnist": _mirrored(
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        [
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ],
    ),
    "cifar10": (
        Resource("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),
    ),
    "svhn": (
        Resource("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",)),
        Resource("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",)),
    ),
}
_TORCHVISION_DIRS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "svhn": "", "cifar10": ""}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ------------------------------------------------------------------------------ record
@dataclass
class DatasetSplits:
    """A dataset in memory: float32 images ``[n, C, H, W]`` and int64 labels for train and test.

    ``meta`` records the source (path and how it was found), counts before and after class
    selection/subsampling, the original class ids kept, and the preprocessing applied.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    meta: dict = field(default_factory=dict)
    train_clean_y: torch.Tensor | None = None  # the true training labels, when the data bring their own noise

    def to(self, device: str | torch.device) -> "DatasetSplits":
        """A copy with the tensors on ``device`` (e.g. to batch by index on the GPU)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            train_clean_y=None if self.train_clean_y is None else self.train_clean_y.to(device),
        )

    def __repr__(self) -> str:
        return (
            f"DatasetSplits({self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
            f"num_classes={self.num_classes}, preprocess={self.meta.get('preprocessing', {}).get('preset')!r})"
        )


@dataclass
class _Raw:
    train_x: np.ndarray  # (n, C, H, W), uint8 (or float for digits/synthetic)
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    scale: float | None  # divide by this to reach [0, 1]; None: already final values (synthetic, arrays)
    meta: dict
    train_clean: np.ndarray | None = None  # true training labels when train_y is already noisy (arrays)


# --------------------------------------------------------------------------- locations
def cache_dir(name: str) -> Path:
    """The user cache folder for ``name``: ``$NCLAB_DATA/<name>`` or ``${XDG_CACHE_HOME:-~/.cache}/nclab/<name>``."""
    root = os.environ.get("NCLAB_DATA")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nclab" / name


def dataset_locations(name: str, *, data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every folder searched for ``name``, in order, as ``(origin, path)``."""
    out: list[tuple[str, Path]] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        out += [("data_dir", d), ("data_dir", d / name)]
        tv = _TORCHVISION_DIRS.get(name)
        if tv:
            out.append(("data_dir", d / tv))
    out.append(("cache", cache_dir(name)))
    if name in SYSTEM_DIRS:
        out.append(("system", SYSTEM_DIRS[name]))
    return out


def _idx_files_in(d: Path) -> tuple[dict[str, Path] | None, list[str]]:
    found, missing = {}, []
    for base in _IDX_FILES:
        for cand in (d / base, d / f"{base}.gz"):
            if cand.is_file():
                found[base] = cand
                break
        else:
            missing.append(f"{base}[.gz]")
    return (found if not missing else None), missing


def _cifar_in(d: Path) -> tuple[dict[str, Path] | None, list[str]]:
    if (d / "cifar-10-batches-py" / "data_batch_1").is_file():
        return {"source": d / "cifar-10-batches-py"}, []
    if (d / "data_batch_1").is_file() and (d / "test_batch").is_file():
        return {"source": d}, []
    if (d / "cifar-10-python.tar.gz").is_file():
        return {"source": d / "cifar-10-python.tar.gz"}, []
    return None, ["cifar-10-python.tar.gz or cifar-10-batches-py/"]


def _svhn_in(d: Path) -> tuple[dict[str, Path] | None, list[str]]:
    found = {n: d / n for n in ("train_32x32.mat", "test_32x32.mat") if (d / n).is_file()}
    missing = [n for n in ("train_32x32.mat", "test_32x32.mat") if n not in found]
    return (found if not missing else None), missing


_FINDERS: dict[str, Callable[[Path], tuple[dict[str, Path] | None, list[str]]]] = {
    "mnist": _idx_files_in,
    "fashion-mnist": _idx_files_in,
    "cifar10": _cifar_in,
    "svhn": _svhn_in,
}


def _locate(name: str, data_dir: str | Path | None, download: bool) -> tuple[str, dict[str, Path]]:
    finder = _FINDERS[name]
    looked: list[str] = []
    for origin, d in dataset_locations(name, data_dir=data_dir):
        files, missing = finder(d)
        if files is not None:
            return origin, files
        state = "does not exist" if not d.exists() else f"missing {', '.join(missing)}"
        looked.append(f"{d} ({origin}: {state})")
    target = (Path(data_dir).expanduser() / name) if data_dir is not None else cache_dir(name)
    if download:
        for res in REMOTE[name]:
            dest = target / res.filename
            if not dest.is_file():
                fetch(res.urls, dest, md5=res.md5)
        files, missing = finder(target)
        if files is None:  # pragma: no cover - fetch raises before this
            raise DataNotFoundError(f"download of {name} into {target} is incomplete: missing {missing}")
        return "download", files
    how = [f"pass download=True (CLI: --download) to fetch it from {REMOTE[name][0].urls[0]} (checksummed) into {target}"]
    if name in APT_PACKAGES:
        how.insert(0, f"install the system copy: sudo apt-get install {APT_PACKAGES[name]}")
    how.append("or put the files in a folder and pass data_dir=... (CLI: --data-dir DIR)")
    raise DataNotFoundError(
        f"dataset {name!r} not found. Looked in:\n  - " + "\n  - ".join(looked) + "\nTo get it:\n  - " + "\n  - ".join(how)
    )


# -------------------------------------------------------------------- parsed-array cache
_PARSED: dict[tuple, _Raw] = {}
_PARSED_MAX = 4


def _file_key(paths: Sequence[Path]) -> tuple:
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(key)


def _cached(key: tuple, build: Callable[[], _Raw]) -> _Raw:
    """Parsed raw arrays are kept per process (read-only), keyed by path, mtime and size."""
    if key not in _PARSED:
        raw = build()
        for a in (raw.train_x, raw.train_y, raw.test_x, raw.test_y, raw.train_clean):
            if a is not None:
                a.setflags(write=False)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = raw
    return _PARSED[key]


def _with_origin(raw: _Raw, origin: str) -> _Raw:
    """The cached arrays with this call's origin (the same files can be reached several ways)."""
    return dataclasses.replace(raw, meta={**raw.meta, "origin": origin})


def clear_cache() -> None:
    """Forget parsed arrays kept by this process."""
    _PARSED.clear()


# ----------------------------------------------------------------------------- loaders
def _no_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(f"dataset {name!r} takes no options; got {sorted(options)}")


def _take_options(name: str, options: Mapping[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        hints = {u: difflib.get_close_matches(u, defaults, n=1) for u in unknown}
        msg = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise ValueError(f"unknown option(s) for dataset {name!r}: {msg}; valid: {', '.join(defaults)}")
    return {**defaults, **options}


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The pixels (1797 x 64) and labels of scikit-learn's bundled digits: the file that
    ``sklearn.datasets.load_digits`` reads, read directly, because importing
    ``sklearn.datasets`` (scipy and more) costs about 2 s of CPU in every process that trains on
    digits. Falls back to ``load_digits`` when the file is not where scikit-learn keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def _load_digits(*, data_dir, download, seed, options) -> _Raw:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16); fixed stratified test split.

    The train/test split does not depend on ``seed`` (it uses seed 0, stream "digits-split"),
    so every run sees the same test set; default test_fraction = 0.25 → 1347 train / 450 test.
    """
    from nclab.data.split import train_val_split

    opts = _take_options("digits", options, {"test_fraction": 0.25})

    def build() -> _Raw:
        flat, target = _bundled_digits()
        x = flat.astype(np.float32).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8), 0..16
        y = target.astype(np.int64)
        tr, te = train_val_split(y, fraction=opts["test_fraction"], generator=numpy_generator(0, "digits-split"))
        return _Raw(x[tr], y[tr], x[te], y[te], DIGIT_CLASSES, 16.0,
                    {"source": "sklearn.datasets.load_digits", "origin": "bundled",
                     "split": {"test_fraction": opts["test_fraction"], "stratified": True, "seed": 0, "stream": "digits-split"}})  # fmt: skip

    return _cached(("digits", opts["test_fraction"]), build)


def _idx_loader(name: str, class_names: list[str]) -> Callable[..., _Raw]:
    def load(*, data_dir, download, seed, options) -> _Raw:
        _no_options(name, options)
        origin, files = _locate(name, data_dir, download)
        paths = [files[b] for b in _IDX_FILES]

        def build() -> _Raw:
            trx, tr_y = read_idx_pair(paths[0], paths[1])
            tex, te_y = read_idx_pair(paths[2], paths[3])
            for p, y in ((paths[1], tr_y), (paths[3], te_y)):
                if y.min() < 0 or y.max() >= len(class_names):
                    raise DataFormatError(f"{p}: labels must be in 0..{len(class_names) - 1}; found {y.min()}..{y.max()}")
            return _Raw(trx[:, None], tr_y, tex[:, None], te_y, class_names, 255.0,
                        {"source": str(paths[0].parent), "files": [str(p) for p in paths]})  # fmt: skip

        return _with_origin(_cached((name, *_file_key(paths)), build), origin)

    load.__doc__ = f"{name}: IDX files (gzip or raw), 28x28 grey, 10 classes."
    return load


def _load_cifar10(*, data_dir, download, seed, options) -> _Raw:
    """CIFAR-10 python version: ``cifar-10-python.tar.gz`` (read without extracting) or ``cifar-10-batches-py/``."""
    _no_options("cifar10", options)
    origin, files = _locate("cifar10", data_dir, download)
    src = files["source"]
    key_paths = [src] if src.is_file() else [src / "data_batch_1", src / "test_batch"]

    def build() -> _Raw:
        d = read_cifar10(src)
        for split in ("train", "test"):
            y = d[f"{split}_y"]
            if y.min() < 0 or y.max() > 9:
                raise DataFormatError(f"{src}: CIFAR-10 {split} labels must be in 0..9; found {y.min()}..{y.max()}")
        names = d["class_names"] if d["class_names"] and len(d["class_names"]) == 10 else CIFAR10_CLASSES
        return _Raw(d["train_x"], d["train_y"], d["test_x"], d["test_y"], names, 255.0,
                    {"source": str(src), "files": [str(src)]})  # fmt: skip

    return _with_origin(_cached(("cifar10", *_file_key(key_paths)), build), origin)


def _load_svhn(*, data_dir, download, seed, options) -> _Raw:
    """SVHN cropped digits: ``train_32x32.mat`` / ``test_32x32.mat``; label 10 means digit 0."""
    _no_options("svhn", options)
    origin, files = _locate("svhn", data_dir, download)
    tr, te = files["train_32x32.mat"], files["test_32x32.mat"]

    def build() -> _Raw:
        trx, tr_y = read_svhn_mat(tr)
        tex, te_y = read_svhn_mat(te)
        return _Raw(trx, tr_y, tex, te_y, DIGIT_CLASSES, 255.0,
                    {"source": str(tr.parent), "files": [str(tr), str(te)]})  # fmt: skip

    return _with_origin(_cached(("svhn", *_file_key([tr, te])), build), origin)


SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "num_classes": 4,
    "train_per_class": 200,
    "test_per_class": 100,
    "shape": (1, 8, 8),
    "separation": 4.0,
    "noise": 1.0,
}


def _load_synthetic(*, data_dir, download, seed, options) -> _Raw:
    """Seeded Gaussian class clusters in image shape.

    Class centres are random directions (Gaussian, normalized) scaled to norm separation/√2, so
    pairwise centre distances are ≈ ``separation`` in high dimension; each sample is its centre
    plus ``noise`` · N(0, I). Seeded by ``seed`` (stream "synthetic"); train and test come from
    the same draw. Options: num_classes, train_per_class, test_per_class, shape, separation, noise.
    """
    o = _take_options("synthetic", options, SYNTHETIC_DEFAULTS)
    shape = tuple(int(s) for s in o["shape"])
    C, ntr, nte = int(o["num_classes"]), int(o["train_per_class"]), int(o["test_per_class"])
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic shape must be (C, H, W) with positive sizes; got {o['shape']!r}")
    if C < 2 or ntr < 1 or nte < 1:
        raise ValueError("synthetic needs num_classes >= 2 and train/test_per_class >= 1")
    if not (np.isfinite(o["separation"]) and o["separation"] >= 0 and np.isfinite(o["noise"]) and o["noise"] >= 0):
        raise ValueError("synthetic separation and noise must be finite and >= 0")
    g = numpy_generator(seed, "synthetic")
    D = int(np.prod(shape))
    centres = g.standard_normal((C, D))
    centres *= (float(o["separation"]) / np.sqrt(2.0)) / np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(per: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(C, dtype=np.int64), per)
        x = centres[y] + float(o["noise"]) * g.standard_normal((y.size, D))
        return x.astype(np.float32).reshape(-1, *shape), y

    trx, tr_y = draw(ntr)
    tex, te_y = draw(nte)
    return _Raw(trx, tr_y, tex, te_y, [f"cluster {c}" for c in range(C)], None,
                {"source": "generated", "origin": "generated", "options": {**o, "shape": list(shape)}})  # fmt: skip



# ------------------------------------------------------------------------ own arrays
@dataclass
class ArrayDataset:
    """Your own data as arrays: what an ``npz`` file holds, what a registered loader returns,
    and what ``nclab.train.train(config, dataset=...)`` accepts.

    * ``x``: inputs, one row per sample, any trailing shape (``(n, d)`` for an MLP,
      ``(n, C, H, W)`` for a CNN); used as given (cast to float32, no rescaling);
    * ``y``: int class ids (n,) — the training labels (noisy ones, if the data bring their own noise);
    * ``x_test`` / ``y_test``: optional, both or neither; without them a stratified
      ``test_fraction`` (default 0.2) of the samples is held out (seed 0, stream
      ``"arrays-split"``: the same split for every run);
    * ``clean_y``: optional true labels for ``y`` (real-world noise with known truth);
      then the run injects no noise (``noise.kind: none``) and memorization,
      dilation and detection quality are measured against ``clean_y``;
    * ``class_names``: optional; their number fixes C (default: largest label + 1).
    """

    x: Any
    y: Any
    x_test: Any = None
    y_test: Any = None
    clean_y: Any = None
    class_names: Sequence[str] | None = None


_ARRAY_KEYS = ("x", "y", "x_test", "y_test", "clean_y", "class_names")


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def as_array_dataset(data: Any, *, source: str = "arrays") -> ArrayDataset:
    """An :class:`ArrayDataset` from one, from a mapping with its keys, or from a tuple ``(x, y)``."""
    if isinstance(data, ArrayDataset):
        return data
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - set(_ARRAY_KEYS))
        if unknown:
            raise DataFormatError(f"{source}: unknown array(s) {unknown}; expected {', '.join(_ARRAY_KEYS)}")
        for key in ("x", "y"):
            if key not in data:
                raise DataFormatError(f"{source}: missing array {key!r} (found: {', '.join(sorted(data)) or 'nothing'}); "
                                      "x (inputs, one row per sample) and y (integer labels) are required")
        return ArrayDataset(**dict(data))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return ArrayDataset(x=data[0], y=data[1])
    raise TypeError(f"{source}: expected an ArrayDataset, a mapping with keys x, y[, x_test, y_test, clean_y, "
                    f"class_names] or a tuple (x, y); got {type(data).__name__}")


def _int_labels(a: Any, *, name: str, n: int | None, source: str) -> np.ndarray:
    y = _np(a)
    if y.ndim != 1:
        raise DataFormatError(f"{source}: {name} must be a vector of class ids; got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise DataFormatError(f"{source}: {name} has {y.shape[0]} entries but the inputs have {n} rows")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{source}: {name} must hold integer class ids; got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataFormatError(f"{source}: {name} has negative class ids (min {y.min()})")
    return y.astype(np.int64)


def _inputs(a: Any, *, name: str, source: str) -> np.ndarray:
    x = _np(a)
    if x.ndim < 2:
        raise DataFormatError(f"{source}: {name} must have one row per sample and at least one feature "
                              f"(shape (n, d) or (n, C, H, W)); got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise DataFormatError(f"{source}: {name} must be real numbers; got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataFormatError(f"{source}: {name} contains NaN or inf")
    return x


def _out_of_range(labels: np.ndarray, limit: int, *, show: int = 3) -> str:
    """``"has label 1000000000 (50 samples) outside [0, 2)"``: the largest offending values with
    their sample counts, at most ``show`` of them (a message never lists thousands)."""
    bad, counts = np.unique(labels[labels >= limit], return_counts=True)
    parts = [f"{int(v)} ({int(c)} sample{'s' if c != 1 else ''})" for v, c in zip(bad[::-1][:show], counts[::-1][:show])]
    more = f" and {bad.size - show} more values" if bad.size > show else ""
    return f"has label{'s' if bad.size > 1 else ''} {', '.join(parts)}{more} outside [0, {limit})"


def _raw_from_arrays(data: Any, *, source: str, test_fraction: float = 0.2) -> _Raw:
    """Validate an :class:`ArrayDataset` (or mapping/tuple) and hold out a test split if none is given."""
    d = as_array_dataset(data, source=source)
    x = _inputs(d.x, name="x", source=source)
    n = x.shape[0]
    y = _int_labels(d.y, name="y", n=n, source=source)
    clean = None if d.clean_y is None else _int_labels(d.clean_y, name="clean_y", n=n, source=source)
    if (d.x_test is None) != (d.y_test is None):
        raise DataFormatError(f"{source}: give both x_test and y_test or neither")
    if d.x_test is not None:
        xt = _inputs(d.x_test, name="x_test", source=source)
        if xt.shape[1:] != x.shape[1:]:
            raise DataFormatError(f"{source}: x_test rows have shape {xt.shape[1:]} but x rows have {x.shape[1:]}")
        yt = _int_labels(d.y_test, name="y_test", n=xt.shape[0], source=source)
    labelled = {"y": y, "clean_y": clean, "y_test": yt if d.x_test is not None else None}
    if n == 0 or (d.x_test is not None and xt.shape[0] == 0):
        raise DataFormatError(f"{source}: {'x' if n == 0 else 'x_test'} holds no samples")
    if d.class_names is not None:
        names = [str(c) for c in d.class_names]
        limit, why = len(names), f"{len(names)} class_names are given"
    else:
        # without declared classes the labels set the count; a count above the number of
        # samples is a broken file (one label of 10^9 would otherwise allocate 10^9 classes)
        total = sum(a.size for a in labelled.values() if a is not None)
        limit, why = total, f"without class_names the class count is inferred from the labels and cannot exceed the number of samples ({total})"
    for key, a in labelled.items():
        if a is not None and a.size and int(a.max()) >= limit:
            raise DataFormatError(f"{source}: {key} {_out_of_range(a, limit)}; {why}")
    if d.class_names is None:
        found = max(int(a.max()) for a in labelled.values() if a is not None and a.size) + 1
        names = [str(c) for c in range(found)]
    if len(names) < 2:
        raise DataFormatError(f"{source}: need at least 2 classes; found {len(names)}")
    split = None
    if d.x_test is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
        from nclab.data.split import train_val_split

        tr, te = train_val_split(y, fraction=test_fraction, generator=numpy_generator(0, "arrays-split"))
        tr, te = np.sort(np.asarray(tr)), np.sort(np.asarray(te))
        if tr.size == 0 or te.size == 0:
            raise DataFormatError(f"{source}: holding out test_fraction {test_fraction} of {n} samples leaves the "
                                  f"{'training' if tr.size == 0 else 'test'} split empty; give x_test/y_test or "
                                  "more samples, or change test_fraction")
        # held-out labels are the truth when the data bring it
        x, xt, yt, y = x[tr], x[te], (clean if clean is not None else y)[te], y[tr]
        clean = None if clean is None else clean[tr]
        split = {"test_fraction": test_fraction, "stratified": True, "seed": 0, "stream": "arrays-split"}
    return _Raw(x, y, xt, yt, names, None,
                {"source": source, "origin": "arrays", "kind": "arrays", "split": split,
                 "own_noise": clean is not None}, train_clean=clean)  # fmt: skip


def _check_npz_headers(path: Path) -> None:
    """Refuse an ``.npz`` whose array headers promise more data than the archive holds, before
    numpy allocates it (a 100-byte member can claim terabytes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                    header = f.tell()
                if dtype.hasobject:
                    continue  # np.load(allow_pickle=False) refuses it with its own message
                claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if claimed > info.file_size - header:
                    raise DataFormatError(
                        f"{path}: array {info.filename[:-4]!r} declares shape {tuple(shape)} {dtype} "
                        f"({claimed:,} bytes) but the file holds {max(0, info.file_size - header):,} bytes of it "
                        "(a corrupt or crafted .npz)")
    except DataFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from None


def _load_npz(*, data_dir, download, seed, options) -> _Raw:
    """Your arrays in one ``.npz`` file (``dataset: {name: npz, path: FILE}``): ``x``, ``y``
    and optionally ``x_test``, ``y_test``, ``clean_y``, ``class_names`` (see
    :class:`ArrayDataset`). Option: ``test_fraction`` (0.2; used without test arrays)."""
    opts = _take_options("npz", options, {"path": None, "test_fraction": 0.2})
    if opts["path"] is None:
        raise ValueError("dataset 'npz' needs a file: dataset.path (CLI: dataset.path=FILE.npz)")
    path = Path(opts["path"]).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"dataset 'npz': {path} does not exist or is not a file")

    def build() -> _Raw:
        import zipfile

        if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so, misleadingly
            raise DataFormatError(f"{path}: not a readable .npz file (not a zip archive; save with numpy.savez)")
        _check_npz_headers(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except ValueError as exc:  # object arrays, not an npz
            raise DataFormatError(f"{path}: cannot be read as an .npz of plain arrays ({exc})") from None
        except (OSError, EOFError) as exc:
            raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from None
        if "class_names" in arrays:
            arrays["class_names"] = [str(c) for c in arrays["class_names"].tolist()]
        return _raw_from_arrays(arrays, source=str(path), test_fraction=float(opts["test_fraction"]))

    return _cached(("npz", float(opts["test_fraction"]), *_file_key([path])), build)


def _user_loader(name: str, loader: Callable[..., Any]) -> Callable[..., _Raw]:
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = {}
    takes_seed = "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def load(*, data_dir, download, seed, options) -> _Raw:
        opts = dict(options)
        test_fraction = float(opts.pop("test_fraction", 0.2)) if "test_fraction" not in params else 0.2
        if takes_seed:
            opts["seed"] = seed
        out = loader(**opts)
        if isinstance(out, DatasetSplits):
            raise TypeError(f"dataset {name!r}: the loader returned DatasetSplits; return an ArrayDataset or a "
                            "mapping of arrays instead (nclab selects classes and subsamples itself)")
        return _raw_from_arrays(out, source=f"dataset {name!r}", test_fraction=test_fraction)

    load.__doc__ = getattr(loader, "__doc__", None) or f"{name}: registered with nclab.data.register_dataset"
    return load


DATASETS: dict[str, Callable[..., _Raw]] = {
    "digits": _load_digits,
    "fashion-mnist": _idx_loader("fashion-mnist", FASHION_MNIST_CLASSES),
    "mnist": _idx_loader("mnist", DIGIT_CLASSES),
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
    "synthetic": _load_synthetic,
    "npz": _load_npz,
}
_BUILTIN = frozenset(DATASETS)
_TAKES_PATH = {"npz"}  # datasets that read dataset.path


def register_dataset(name: str, loader: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Make ``loader`` available as ``dataset: {name: NAME}`` (configs, ``load_dataset``, sweeps).

    ``loader(**options)`` is called with the config's ``dataset.options``, plus
    ``path=`` when ``dataset.path`` is set and ``seed=`` (the run's seed) when it has
    a ``seed`` parameter; it returns an :class:`ArrayDataset` or a mapping with its
    keys (``x``, ``y``, optional ``x_test``, ``y_test``, ``clean_y``,
    ``class_names``). nclab then selects ``classes``, subsamples ``per_class`` and
    validates shapes exactly as for built-in data. Registration lasts for this
    process: runs trained on a registered dataset record it in ``config.yaml``,
    and ``nclab detect`` / ``nclab analyze`` work on them from the run directory
    alone. Built-in names cannot be replaced; ``overwrite=True`` replaces an
    earlier registration.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip().lower():
        raise ValueError(f"dataset name must be a non-empty lower-case string without surrounding spaces; got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader must be callable; got {type(loader).__name__}")
    if name in _BUILTIN or name in _ALIASES:
        raise ValueError(f"{name!r} is a built-in dataset; choose another name")
    if name in DATASETS and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    DATASETS[name] = _user_loader(name, loader)
    _TAKES_PATH.add(name)
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}  # fmt: skip


def resolve_name(name: str) -> str:
    """Canonical dataset name (case-insensitive, a few common spellings); error lists valid names."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string; got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return key
    hint = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=1)
    extra = f" Did you mean {_ALIASES.get(hint[0], hint[0])!r}?" if hint else ""
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.{extra}")


# ------------------------------------------------------------------------- public entry
def _class_list(classes: Any, total: int) -> list[int]:
    if classes is None:
        return list(range(total))
    if isinstance(classes, bool):
        raise TypeError(f"classes must be None, an int or a list of class ids; got {classes!r}")
    if isinstance(classes, (int, np.integer)):
        if not 2 <= classes <= total:
            raise ValueError(f"classes={classes} must be between 2 and {total} (the dataset has {total} classes)")
        return list(range(int(classes)))
    ids = list(classes)
    if len(ids) < 2:
        raise ValueError(f"classes must name at least 2 classes; got {ids}")
    for c in ids:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < total:
            raise ValueError(f"class id {c!r} is not an integer in [0, {total})")
    if len(set(int(c) for c in ids)) != len(ids):
        raise ValueError(f"classes has duplicates: {ids}")
    return [int(c) for c in ids]


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    classes: int | Sequence[int] | None = None,
    per_class: int | None = None,
    preprocess: str = "native",
    seed: int = 0,
    download: bool = False,
    options: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> DatasetSplits:
    """Load a registered dataset into memory as float32 tensors.

    Steps: locate and parse (cached per process) → keep ``classes`` (None: all; int k: ids
    0..k-1, so ``2`` is the paper's binary {0, 1}; list: those ids relabelled 0..len-1 in the
    given order; train and test alike) → keep up to ``per_class`` training samples per class
    (uniform, seeded by ``seed`` stream "data"; order preserved; test untouched) → ``preprocess``
    ("native" or "paper", see :mod:`nclab.data.preprocess`). ``options`` are dataset-specific
    (synthetic: num_classes, train_per_class, ...; digits: test_fraction). ``path`` is the file
    of ``npz`` (and is passed to registered loaders).
    """
    key = resolve_name(name)
    opts = dict(options or {})
    if path is not None:
        if key not in _TAKES_PATH:
            raise ValueError(f"dataset {key!r} reads no path (dataset.path); use data_dir for the folder of its files")
        opts["path"] = str(path)
    return _finish(DATASETS[key](data_dir=data_dir, download=download, seed=seed, options=opts), key,
                   classes=classes, per_class=per_class, preprocess=preprocess, seed=seed)


def from_arrays(
    data: Any,
    *,
    name: str = "arrays",
    classes: int | Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    """In-memory data (an :class:`ArrayDataset`, a mapping with its keys, or ``(x, y)``) as
    :class:`DatasetSplits`, with the same validation, class selection and per-class
    subsampling as :func:`load_dataset`. Inputs are used as given (no preprocessing)."""
    if isinstance(data, DatasetSplits):
        return data
    return _finish(_raw_from_arrays(data, source=name, test_fraction=test_fraction), name,
                   classes=classes, per_class=per_class, preprocess="native", seed=seed)


def _finish(raw: _Raw, key: str, *, classes, per_class, preprocess: str, seed: int) -> DatasetSplits:
    if preprocess not in pp.PRESETS:
        raise ValueError(f"unknown preprocess preset {preprocess!r}; valid: {', '.join(pp.PRESETS)}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1):
        raise ValueError(f"per_class must be None or a positive integer; got {per_class!r}")
    if preprocess == "paper" and raw.meta.get("kind") == "arrays":
        raise ValueError(f"dataset {key!r}: preprocess 'paper' (resize to 32x32, 3 channels) is for the image "
                         "datasets; your arrays are used as given (preprocess: native)")
    total = len(raw.class_names)
    keep = _class_list(classes, total)

    lut = np.full(total, -1, dtype=np.int64)
    lut[keep] = np.arange(len(keep))
    tr_idx = np.flatnonzero(lut[raw.train_y] >= 0)
    te_idx = np.flatnonzero(lut[raw.test_y] >= 0)
    if per_class is not None:
        sub = subsample_per_class(lut[raw.train_y[tr_idx]], per_class=int(per_class), generator=numpy_generator(seed, "data"))
        tr_idx = tr_idx[sub]
    train_y, test_y = lut[raw.train_y[tr_idx]], lut[raw.test_y[te_idx]]
    train_clean = None
    if raw.train_clean is not None:
        train_clean = lut[raw.train_clean[tr_idx]]
        if (train_clean < 0).any():
            lost = sorted(set(raw.train_clean[tr_idx][train_clean < 0].tolist()))
            raise DataFormatError(f"dataset {key!r}: classes={keep} drops class(es) {lost} that clean_y gives to "
                                  "kept samples; keep all classes the clean labels use")
    k = len(keep)
    for split, y in (("train", train_y), ("test", test_y)):
        present = np.bincount(y, minlength=k)
        if (present == 0).any():
            empty = [keep[i] for i in np.flatnonzero(present == 0)]
            shown = ", ".join(map(str, empty[:5])) + (f", ... ({len(empty)} classes in all)" if len(empty) > 5 else "")
            raise DataFormatError(f"dataset {key!r}: {split} split has no samples of class(es) {shown}")

    def prep(x: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        x = x if idx.size == x.shape[0] else x[idx]  # idx is sorted: full size means all, in order
        t = pp.to_float(x, scale=1.0 if raw.scale is None else raw.scale)  # a fresh tensor we own
        if raw.scale is None:  # synthetic: values are already final features
            return pp.paper(t, normalize=False) if preprocess == "paper" else (t, {"preset": "native", "mean": None, "std": None, "resize": None})
        return pp.paper(t) if preprocess == "paper" else pp.native(t, dataset=key, inplace=True)

    train_x, info = prep(raw.train_x, tr_idx)
    test_x, _ = prep(raw.test_x, te_idx)
    info = {**info, "scale": raw.scale}
    meta = {
        **raw.meta,
        "classes": keep,
        "per_class": per_class,
        "seed": seed,
        "counts": {
            "train": int(train_y.size),
            "test": int(test_y.size),
            "train_per_class": np.bincount(train_y, minlength=k).tolist(),
            "test_per_class": np.bincount(test_y, minlength=k).tolist(),
            "original_train": int(raw.train_y.size),
            "original_test": int(raw.test_y.size),
        },
        "preprocessing": info,
    }
    return DatasetSplits(
        name=key,
        train_x=train_x,
        train_y=torch.from_numpy(train_y),
        test_x=test_x,
        test_y=torch.from_numpy(test_y),
        num_classes=k,
        input_shape=tuple(train_x.shape[1:]),
        class_names=[raw.class_names[c] for c in keep],
        meta=meta,
        train_clean_y=None if train_clean is None else torch.from_numpy(train_clean),
    )
