"""Readers for the on-disk dataset formats: IDX (MNIST family), CIFAR-10 pickles, SVHN .mat.

Each reader returns plain numpy arrays and raises :class:`DataFormatError` naming the file
when the bytes are not what the format promises (bad magic, truncated, wrong shapes).
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nclab.data.errors import DataFormatError

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataFormatError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its declared shape.

    Header: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions,
    then one big-endian uint32 per dimension; the data follow in C order.
    """
    path = Path(path)
    buf = _read_maybe_gzip(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {buf[:4].hex() or 'empty'})")
    ndim = buf[3]
    if ndim == 0 or len(buf) < 4 + 4 * ndim:
        raise DataFormatError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - 4 - 4 * ndim
    if have != expected:
        what = "truncated" if have < expected else "has trailing bytes"
        raise DataFormatError(f"{path}: IDX file {what}: header says shape {shape} ({expected} bytes), found {have} bytes")
    arr = np.frombuffer(buf, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W) uint8 and labels (n,) int64 from two IDX files, checked for consistency."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataFormatError(f"{images}: expected a 3-D unsigned-byte IDX image file, got shape {x.shape} {x.dtype}")
    if y.ndim != 1:
        raise DataFormatError(f"{labels}: expected a 1-D IDX label file, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataFormatError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x, y.astype(np.int64)


# ------------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """Only the numpy pieces a CIFAR batch needs; refuses anything else (pickles can run code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how python-3 protocol-2 pickles store bytes (harmless)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _load_cifar_pickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a format problem of that file
        raise DataFormatError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a dict, got {type(obj).__name__}")
    # python-2 pickles decode their str keys as bytes
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_cifar_pickle(data, where)
    if "data" not in d or "labels" not in d:
        raise DataFormatError(f"{where}: CIFAR batch lacks 'data'/'labels' (keys: {sorted(d)})")
    x = np.asarray(d["data"])
    y = np.asarray(d["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or x.shape[0] != y.shape[0]:
        raise DataFormatError(f"{where}: CIFAR batch has data {x.shape} {x.dtype} and {y.shape[0]} labels; expected (n, 3072) uint8")
    return x.reshape(-1, 3, 32, 32), y


CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def read_cifar10(source: str | Path) -> dict[str, Any]:
    """CIFAR-10 from the python-version archive (``cifar-10-python.tar.gz``) or its extracted folder.

    Returns ``{"train_x": (50000, 3, 32, 32) uint8, "train_y", "test_x", "test_y", "class_names"}``.
    """
    source = Path(source)
    files: dict[str, bytes] = {}
    wanted = set(CIFAR10_TRAIN_BATCHES) | {"test_batch", "batches.meta"}
    if source.is_dir():
        for name in wanted:
            p = source / name
            if p.exists():
                files[name] = p.read_bytes()
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if base in wanted and m.isfile():
                        f = tar.extractfile(m)
                        files[base] = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataFormatError(f"{source}: corrupt or truncated CIFAR archive ({e})") from None
    missing = sorted(wanted - {"batches.meta"} - set(files))
    if missing:
        raise DataFormatError(f"{source}: CIFAR-10 data incomplete, missing {', '.join(missing)}")
    parts = [_cifar_batch(files[b], f"{source}:{b}") for b in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = _cifar_batch(files["test_batch"], f"{source}:test_batch")
    names = None
    if "batches.meta" in files:
        meta = _load_cifar_pickle(files["batches.meta"], f"{source}:batches.meta")
        raw = meta.get("label_names")
        if raw is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return {
        "train_x": np.concatenate([p[0] for p in parts]),
        "train_y": np.concatenate([p[1] for p in parts]),
        "test_x": test_x,
        "test_y": test_y,
        "class_names": names,
    }


# -------------------------------------------------------------------------------- SVHN
def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits (``*_32x32.mat``): ``X`` (32, 32, 3, n) uint8, ``y`` (n, 1) with 10 = digit 0.

    Returns images (n, 3, 32, 32) uint8 and labels (n,) int64 in 0..9.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 (HDF5) files
        raise DataFormatError(f"{path}: MATLAB v7.3 file; SVHN's official files are v5 .mat") from None
    except Exception as e:
        raise DataFormatError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise DataFormatError(f"{path}: SVHN .mat lacks 'X'/'y' (has {sorted(k for k in mat if not k.startswith('__'))})")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataFormatError(f"{path}: expected X of shape (32, 32, 3, n) matching {y.shape[0]} labels; got {x.shape}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataFormatError(f"{path}: SVHN labels must be 1..10 (10 = digit 0); found {y.min()}..{y.max()}")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False), y
