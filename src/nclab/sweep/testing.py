"""Run functions that do not train, for tests and the overhead benchmark.

They have the signature of a real run function, ``fn(config, run_dir) -> final metrics``,
so the sweep machinery (store, executors, resume, search) can be exercised in milliseconds.

``fake_run`` reads an optional ``fake`` section of the config:

* ``sleep`` (seconds), ``fail`` (raise ``RuntimeError``), ``crash`` (``os._exit(3)``,
  simulating a killed worker);
* it writes ``run_dir/metrics.jsonl`` one record per "epoch" (``fake.epochs``, default 3)
  before returning, like the trainer, so a kill mid-run leaves a half-written directory;
* ``val_acc_noisy`` is a smooth deterministic score of the config, peaked at
  ``optim.lr = 1e-2`` and ``loss.alpha = 0.1``: ``1 - 0.1 (log10 lr + 2)^2 - 2 (alpha - 0.1)^2``
  (clipped to [0, 1]), so a search has something to find.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from nclab.store.files import append_jsonl, atomic_write_json

__all__ = ["noop_run", "fake_run", "fake_score", "fake_stack_run", "preload_probe"]


def noop_run(config: dict, run_dir: str) -> dict:
    """Does nothing; returns ``{"value": 0.0}``."""
    return {"value": 0.0}


def preload_probe(config: dict, run_dir: str) -> dict:
    """Reports where it runs: whether the module it asks a forkserver to preload (``colorsys``,
    which nothing else imports) was already loaded when it was called, and its parent pid."""
    import sys  # noqa: PLC0415

    return {"preloaded": "colorsys" in sys.modules, "pid": os.getpid(), "ppid": os.getppid()}


preload_probe.worker_preload = ("colorsys",)  # type: ignore[attr-defined]


def fake_score(config: dict) -> float:
    """``1 - 0.1 (log10 lr + 2)^2 - 2 (alpha - 0.1)^2`` clipped to [0, 1] (see module doc)."""
    lr = float((config.get("optim") or {}).get("lr", 0.01))
    alpha = float((config.get("loss") or {}).get("alpha", 0.1) or 0.0)
    s = 1.0 - 0.1 * (math.log10(lr) + 2.0) ** 2 - 2.0 * (alpha - 0.1) ** 2
    return min(1.0, max(0.0, s))


def fake_run(config: dict, run_dir: str) -> dict:
    """A fake training run (see module doc): writes metrics.jsonl, may sleep, fail or crash."""
    fake = config.get("fake") or {}
    rd = Path(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "metrics.jsonl").unlink(missing_ok=True)  # a re-run starts over, like overwrite=True
    epochs = int(fake.get("epochs", 3))
    sleep = float(fake.get("sleep", 0.0))
    score = fake_score(config)
    rate = float((config.get("noise") or {}).get("rate", 0.0) or 0.0)
    seed = int(config.get("seed", 0))
    for e in range(1, epochs + 1):
        if sleep:
            time.sleep(sleep / epochs)
        append_jsonl(rd / "metrics.jsonl", {"epoch": e, "train_loss": 1.0 / e})
        if fake.get("crash") and e == 1:
            os._exit(3)
    if fake.get("fail"):
        raise RuntimeError(f"fake failure requested for seed {seed}")
    final = {
        "epoch": epochs,
        "val_acc_noisy": score,
        "test_acc": 1.0 - rate / 2,
        "train.memorization": rate * (1 + 0.01 * seed),
        "train.dilation": 0.5 + rate,
        "pid": os.getpid(),
    }
    atomic_write_json(rd / "final.json", final)
    return final


def fake_stack_run(configs: list[dict], run_dirs: list[str]) -> list[dict]:
    """A fake stack: every member through :func:`fake_run` in this process; ``pid`` and the
    stack size are added to each final (a member asking to ``fail`` fails only itself,
    as a diverged member would; a ``crash`` takes the whole stack down)."""
    out = []
    for c, d in zip(configs, run_dirs):
        try:
            final = fake_run(c, d)
        except RuntimeError:
            final = {"status": "diverged"}
        out.append({**final, "stack_size": len(configs), "pid": os.getpid()})
    return out
