"""A/B of the stacked engine's arithmetic, end to end through ``nclab sweep``.

A (``hand``): nclab's stacked MLP (``StackedModel``: bmm forward, ``StackedOptimizer``), what
   ``--stack K`` uses (with a closed-form backward when the A/B in benchmarks/README.md was taken;
   autograd since).
B: ``torch.func``: ``stack_module_state`` + ``vmap(functional_call)`` with autograd and
   torch's own ``torch.optim.SGD`` over the stacked parameters (one parameter group: every
   member of the workload has the same optimizer hyperparameters).
C (``--cases hand,autograd``): A with its ``explicit_grad`` switched off (the same as A since the
   closed-form backward was deleted).

Both run the same command line in fresh processes, alternating A and B, best of ``--rounds``::

    python benchmarks/ab_stacked_engine.py --rounds 5 --epochs 60 --stack 8

One process is ``python benchmarks/ab_stacked_engine.py --engine func -- sweep SPEC ...``:
it swaps the trainer's engine factory and runs nclab's CLI in-process.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml


class FuncEngine:
    """The stack as ``torch.func`` sees it (B); the same interface as ``nclab.train.engine.StackEngine``."""

    def __init__(self, members: Sequence[Any]):
        from torch.func import stack_module_state

        from nclab.train.engine import make_optimizer

        self.members = list(members)
        c0 = members[0].config
        if len({(m.config.optim.lr, m.config.optim.momentum, m.config.optim.weight_decay) for m in members}) != 1:
            raise ValueError("the torch.func engine takes one optimizer hyperparameter set per stack")
        self.params, self.buffers = stack_module_state([m.model for m in members])
        self.names = list(self.params)
        self.base = copy.deepcopy(members[0].model).to("meta")
        self.optimizer = make_optimizer(c0.optim, list(self.params.values()))
        self.alpha = torch.tensor([m.config.loss.alpha if m.config.loss.name == "ls" else 0.0 for m in members])
        self.x = torch.stack([m.data.x_train for m in members])
        self.y = torch.stack([m.data.y_train for m in members])
        self.lrs = [c0.optim.lr] * len(members)

    def _forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        self.base.train(train)

        def one(p, b, xb):
            return functional_call(self.base, {**p, **b}, (xb,))

        return vmap(one, randomness="different")(self.params, self.buffers, x)

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        from nclab.train.engine import batch_bounds
        from nclab.train.stacked_model import stacked_ce_ls_loss

        self.lrs = list(lrs)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lrs[0]
        n = self.y.shape[1]
        perms = torch.stack([torch.randperm(n, generator=m.batches) for m in self.members])
        total = torch.zeros(len(self.members), dtype=torch.float64)
        for s, e in batch_bounds(n, self.members[0].config.batch_size):
            idx = perms[:, s:e]
            xb = torch.gather(self.x, 1, idx.reshape(*idx.shape, *[1] * (self.x.ndim - 2)).expand(
                -1, -1, *self.x.shape[2:]))
            losses = stacked_ce_ls_loss(self._forward(xb, True), self.y.gather(1, idx), self.alpha)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.optimizer.step()
            total += losses.detach().double() * (e - s)
        return (total / n).tolist()

    def params_finite(self) -> list[bool]:
        ok = torch.ones(len(self.members), dtype=torch.bool)
        for t in self.params.values():
            ok &= torch.isfinite(t.detach().reshape(t.shape[0], -1)).all(dim=1)
        return ok.tolist()

    @torch.no_grad()
    def train_logits(self) -> torch.Tensor:
        return self._forward(self.x, False)

    def export(self, k: int) -> None:
        m = self.members[k]
        state = {n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()}
        m.model.load_state_dict(state)
        sd = m.optimizer.state_dict()
        sd["state"] = {i: {key: v[k].clone() for key, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
                       for i, p in enumerate(self.params.values()) if self.optimizer.state.get(p)}
        for g in sd["param_groups"]:
            g["lr"] = self.lrs[k]
        m.optimizer.load_state_dict(sd)

    def remove(self, gone: set[int]) -> None:
        if not gone:
            return
        if len(gone) != len(self.members):
            raise NotImplementedError("the A/B workload's members leave together")
        self.members = []


def _spec(epochs: int, seeds: int, dataset: dict) -> dict:
    base = {"epochs": epochs, "batch_size": 32, "eval_every": epochs, "checkpoint_every": epochs, "threads": 1,
            "device": "cpu", "dataset": dataset, "noise": {"kind": "symmetric_all", "rate": 0.2},
            "model": {"name": "mlp", "depth": 3, "width": 256}, "optim": {"lr": 0.05, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"}}
    return {"name": "ab", "base": base, "seeds": list(range(seeds))}


def _child(engine: str, argv: list[str]) -> None:
    import nclab.train.loop as loop

    if engine == "func":
        loop.make_engine = FuncEngine
    elif engine == "autograd":  # the stacked model with autograd instead of its closed-form backward
        from nclab.train.engine import StackEngine

        def autograd_engine(members):
            e = StackEngine(members)
            e.model.explicit_grad = False
            return e

        loop.make_engine = autograd_engine
    from nclab.cli import main

    sys.argv = ["nclab", *argv]
    main()


def _dataset() -> dict:
    from nclab.data import load_dataset

    try:  # the study's workload when Fashion-MNIST is available offline, else digits
        load_dataset("fashion-mnist", classes=[0, 1], per_class=500, seed=0, download=False)
        return {"name": "fashion-mnist", "classes": [0, 1], "per_class": 500}
    except Exception:  # noqa: BLE001
        return {"name": "digits", "classes": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["hand", "func", "autograd"])
    ap.add_argument("--cases", default="hand,func", help="engines to time at --stack (hand, func, autograd)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--stack", type=int, default=8)
    ap.add_argument("--solo", action="store_true", help="also time one run after another (--stack 1)")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.engine:
        _child(a.engine, [x for x in a.rest if x != "--"])
        return
    ds = _dataset()
    cases = [(e, a.stack) for e in a.cases.split(",")] + ([("hand", 1)] if a.solo else [])
    best = {c: math.inf for c in cases}
    print(f"torch {torch.__version__}, dataset {ds['name']}, {a.seeds} seeds x {a.epochs} epochs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(yaml.safe_dump(_spec(a.epochs, a.seeds, ds)))
        for r in range(a.rounds):
            for engine, stack in cases:
                store = Path(tmp) / f"s{r}{engine}{stack}"
                cmd = [sys.executable, __file__, "--engine", engine, "--", "sweep", str(spec), "--store", str(store),
                       "--executor", "inline", "--stack", str(stack), "--no-progress"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
                wall = time.perf_counter() - t0
                best[(engine, stack)] = min(best[(engine, stack)], wall)
                print(f"round {r}: {engine:4s} stack {stack}: {wall:6.1f} s  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
    for (engine, stack), wall in best.items():
        print(f"best {engine:4s} stack {stack}: {wall:6.1f} s")
    h = best[("hand", a.stack)]
    for e in a.cases.split(",")[1:]:
        print(f"hand-written vs {e} at stack {a.stack}: {best[(e, a.stack)] / h:.2f}x")
    if a.solo:
        print(f"stack {a.stack} vs one after another (hand-written): {best[('hand', 1)] / h:.2f}x")


if __name__ == "__main__":
    main()
