"""Epoch time of ``nclab.train`` vs a plain DataLoader pipeline, same model/data/process.

Trainer: in-memory tensors batched by index, one eval-mode forward per split, the
streaming metric engine (full NC suite incl. memorization/dilation on train and test).

Baseline (the common hand-written pipeline): a ``Dataset`` whose ``__getitem__`` turns one
uint8 image into a normalized float tensor, ``DataLoader(shuffle=True)``, the same model,
optimizer and loss; then a metric pass that collects features with a DataLoader and loops
over samples in Python to build class means and within-class distances (NC1 trace form,
memorization of mislabeled samples) for train and test.

Run: ``python benchmarks/bench_train.py [--dataset fashion-mnist] [--epochs 4]``.
Prints the median per-epoch wall time of each over ``--repeats`` alternating runs (the first
epoch of each run is warm-up and excluded) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nclab.data import load_dataset
from nclab.losses import get_loss
from nclab.models import build_model
from nclab.noise import make_noise
from nclab.seeding import numpy_generator, torch_generator
from nclab.train import TrainConfig, train
from nclab.train.engine import make_optimizer


class PerSampleImages(Dataset):
    """uint8 images; each ``__getitem__`` converts and normalizes one sample (ToTensor + Normalize)."""

    def __init__(self, images_u8: np.ndarray, labels: np.ndarray, clean: np.ndarray, mean, std, scale: float):
        self.images, self.labels, self.clean, self.scale = images_u8, labels, clean, scale
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).float().div(self.scale)
        return (x - self.mean) / self.std, int(self.labels[i]), int(self.clean[i])


def per_sample_metrics(model, loader, num_classes: int) -> dict[str, float]:
    """Features via the loader, then Python loops over samples: class means, NC1-style trace ratio,
    memorization (distance of mislabeled samples to their true class's clean mean)."""
    model.eval()
    feats, ys, cs = [], [], []
    with torch.no_grad():
        for x, y, c in loader:
            feats.append(model.forward_features(x)[1].double())
            ys.append(y)
            cs.append(c)
    h = torch.cat(feats)
    y = torch.cat(ys).tolist()
    c = torch.cat(cs).tolist()
    d = h.shape[1]
    sums = [torch.zeros(d, dtype=torch.float64) for _ in range(num_classes)]
    clean_sums = [torch.zeros(d, dtype=torch.float64) for _ in range(num_classes)]
    counts, clean_counts = [0] * num_classes, [0] * num_classes
    for i in range(len(y)):
        sums[y[i]] += h[i]
        counts[y[i]] += 1
        if y[i] == c[i]:
            clean_sums[y[i]] += h[i]
            clean_counts[y[i]] += 1
    means = [s / max(n, 1) for s, n in zip(sums, counts)]
    clean_means = [s / max(n, 1) for s, n in zip(clean_sums, clean_counts)]
    g = sum(sums) / len(y)
    within, mem, n_noisy = 0.0, 0.0, 0
    for i in range(len(y)):
        within += float(((h[i] - means[y[i]]) ** 2).sum())
        if y[i] != c[i]:
            mem += float(((h[i] - clean_means[c[i]]) ** 2).sum().sqrt())
            n_noisy += 1
    between = sum(float(((m - g) ** 2).sum()) for m in means) / num_classes
    model.train()
    return {"nc1_trace": within / len(y) / max(between, 1e-12), "memorization": mem / max(n_noisy, 1)}


def baseline_epochs(config: TrainConfig, epochs: int) -> list[float]:
    ds = load_dataset(config.dataset.name, classes=config.dataset.classes, per_class=config.dataset.per_class,
                      preprocess="native", seed=config.seed)
    prep = ds.meta["preprocessing"]
    mean, std, scale = prep["mean"], prep["std"], float(prep.get("scale", 255.0))
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def to_u8(x):  # back to the raw integer images the per-sample pipeline starts from
        return (x * s + m).mul(scale).round().clamp(0, 255).to(torch.uint8).numpy()

    y = np.asarray(ds.train_y)
    nl = make_noise(y, kind=config.noise.kind, rate=config.noise.rate, num_classes=ds.num_classes,
                    generator=numpy_generator(config.seed, "noise"))
    train_set = PerSampleImages(to_u8(ds.train_x), np.asarray(nl.noisy), np.asarray(nl.clean), mean, std, scale)
    test_y = np.asarray(ds.test_y)
    test_set = PerSampleImages(to_u8(ds.test_x), test_y, test_y, mean, std, scale)
    model = build_model(config.model.name, input_shape=ds.input_shape, num_classes=ds.num_classes,
                        generator=torch_generator(config.seed, "init"), **config.model.options())
    opt = make_optimizer(config.optim, model.parameters())  # the trainer's optimizer: same update cost
    loss_fn = get_loss(config.loss.name, **config.loss.params())
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        generator=torch_generator(config.seed, "batches"))
    eval_train = DataLoader(train_set, batch_size=config.eval_batch_size)
    eval_test = DataLoader(test_set, batch_size=config.eval_batch_size)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, yb, _c in loader:
            loss = loss_fn(model(x), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        per_sample_metrics(model, eval_train, ds.num_classes)
        per_sample_metrics(model, eval_test, ds.num_classes)
        times.append(time.perf_counter() - t0)
    return times


def trainer_epochs(config: TrainConfig) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        result = train(config, run_dir=Path(d) / "run", progress=False)
    elapsed = [r["elapsed_s"] for r in result.history]
    return [elapsed[0]] + [b - a for a, b in zip(elapsed, elapsed[1:])]


def main() -> None:
    fm = Path("/usr/share/datasets/fashion-mnist").exists()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist" if fm else "digits")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=256)
    # 1 thread by default: on a small shared machine, intra-op threads spin-wait on busy cores and
    # make both timings erratic (seen: 0.6 s -> 12 s per epoch); both sides always use the same count.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternate baseline/trainer runs this many times")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    over = [f"dataset.name={a.dataset}", f"dataset.classes={a.classes}", f"epochs={a.epochs}",
            f"batch_size={a.batch_size}", f"model.depth={a.depth}", f"model.width={a.width}",
            "noise.kind=symmetric", "noise.rate=0.2", "device=cpu", "optim.lr=0.01"]
    if a.per_class:
        over.append(f"dataset.per_class={a.per_class}")
    config = TrainConfig.from_sources(overrides=over)
    ds = load_dataset(a.dataset, classes=a.classes, per_class=a.per_class)
    print(f"dataset {a.dataset} classes={a.classes}: {len(ds.train_y)} train / {len(ds.test_y)} test, "
          f"mlp depth {a.depth} width {a.width}, batch {a.batch_size}, {a.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on this machine skew both timings)")
    skip = 1 if a.epochs > 1 else 0  # first epoch of each run = warm-up
    t_base, t_ours = [], []
    for _ in range(a.repeats):  # alternate, so a change in machine load hits both sides
        t_base += baseline_epochs(config, a.epochs)[skip:]
        t_ours += trainer_epochs(config)[skip:]
    base, ours = statistics.median(t_base), statistics.median(t_ours)
    print(f"baseline (DataLoader + per-sample transform + per-sample metric loop): "
          f"{base:.3f} s/epoch  {[round(t, 3) for t in t_base]}")
    print(f"nclab.train (index batches + streaming metric engine, full suite):    "
          f"{ours:.3f} s/epoch  {[round(t, 3) for t in t_ours]}")
    print(f"speed-up: {base / ours:.2f}x (target >= 2x); load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
