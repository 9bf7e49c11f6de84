"""Datasets as in-memory tensors: registry, file readers, checksummed downloads, splits.

>>> ds = load_dataset("digits", classes=2)          # the paper's binary {0, 1}
>>> tr, va = train_val_split(ds.train_y, fraction=0.2, generator=np.random.default_rng(0))
>>> ds = load_dataset("npz", path="mine.npz")         # your arrays: x, y[, x_test, y_test, clean_y]
>>> register_dataset("mine", lambda **o: ArrayDataset(x=..., y=...))   # then dataset: {name: mine}
"""

from nclab.data.download import fetch, file_digests
from nclab.data.errors import ChecksumError, DataFormatError, DataNotFoundError
from nclab.data.formats import read_cifar10, read_idx, read_idx_pair, read_svhn_mat
from nclab.data.registry import (
    DATASETS,
    REMOTE,
    ArrayDataset,
    SYNTHETIC_DEFAULTS,
    DatasetSplits,
    cache_dir,
    clear_cache,
    as_array_dataset,
    dataset_locations,
    from_arrays,
    load_dataset,
    register_dataset,
    resolve_name,
)
from nclab.data.split import subsample_per_class, train_val_split

__all__ = [
    "DATASETS", "REMOTE", "SYNTHETIC_DEFAULTS", "DatasetSplits", "DataNotFoundError", "DataFormatError",
    "ChecksumError", "load_dataset", "train_val_split", "subsample_per_class", "resolve_name", "cache_dir",
    "dataset_locations", "clear_cache", "fetch", "file_digests", "read_idx", "read_idx_pair",
    "read_cifar10", "read_svhn_mat", "ArrayDataset", "as_array_dataset", "from_arrays", "register_dataset",
]  # fmt: skip
